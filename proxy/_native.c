/* The gate's native parts: what a decision reads on a large restriction set, laid out so that it
 * touches as few cache lines as possible. proxy/native.py falls back to Python equivalents where
 * this module was not built.
 *
 * StrIndex: an immutable map of str keys, laid out so that a lookup touches one cache line.
 *
 * The gate looks every joining participant's meeting id up among the exact ids that restrictions
 * name. With tens of thousands of ids, a dict lookup is two or three cache misses: a slot of its
 * index, the entry, then the key string to compare. StrIndex keeps one control byte per slot (7
 * bits of the hash) in a small array that stays in the CPU caches, and each slot's key bytes
 * inline in a 64-byte slot: an id that is absent is answered from the control bytes alone, and
 * one that is present costs the one slot.
 *
 * Keys are compared by their canonical representation (CPython stores a str in the narrowest
 * of its three widths, so equal strings have equal width, length and bytes); keys too long to be
 * inline are compared as objects. The map is built once and never changes.
 *
 * Schedule: which value holds at a time, for a table entry of restrictions with a window. The
 * window edges are kept as doubles next to the values, in one object, so an entry is read from
 * one place instead of from every match, restriction and window bound (each a separate object).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define INLINE_BYTES 36

/* Strings are always ready from Python 3.12 on, where PyUnicode_READY is deprecated. */
#if PY_VERSION_HEX >= 0x030C0000
#define READY(op) 0
#else
#define READY(op) PyUnicode_READY(op)
#endif

typedef struct {
    Py_hash_t hash;
    PyObject *key;   /* strong reference */
    PyObject *value; /* strong reference */
    uint16_t size;   /* bytes of the key's data, or UINT16_MAX when not inline */
    uint8_t kind;    /* PyUnicode_KIND */
    uint8_t unused;
    char data[INLINE_BYTES];
} Slot;

_Static_assert(sizeof(Slot) == 64, "a slot is one cache line");

typedef struct {
    PyObject_HEAD
    Py_ssize_t used;
    size_t mask;     /* slots - 1 */
    uint8_t *control; /* 0: empty; else 0x80 | 7 bits of the hash */
    Slot *slots;      /* 64-byte aligned */
} StrIndex;

static inline uint8_t
tag_of(Py_hash_t hash)
{
    return (uint8_t)(0x80 | ((uint64_t)hash >> 57));
}

/* The slot holding key, or NULL. key is a ready str and hash its str hash. */
static inline Slot *
find(StrIndex *self, PyObject *key, Py_hash_t hash)
{
    if (self->slots == NULL) {
        return NULL;
    }
    uint8_t tag = tag_of(hash);
    size_t mask = self->mask;
    size_t i = (size_t)hash & mask;
    Py_ssize_t length = PyUnicode_GET_LENGTH(key);
    int kind = PyUnicode_KIND(key);
    size_t size = (size_t)length * (size_t)kind;
    for (;;) {
        uint8_t c = self->control[i];
        if (c == 0) {
            return NULL;
        }
        if (c == tag) {
            Slot *slot = &self->slots[i];
            if (slot->hash == hash) {
                if (slot->size != UINT16_MAX) {
                    if (slot->size == size && slot->kind == kind
                        && memcmp(slot->data, PyUnicode_DATA(key), size) == 0) {
                        return slot;
                    }
                }
                else if (slot->key == key || (size > INLINE_BYTES
                         && PyUnicode_Compare(slot->key, key) == 0)) {
                    return slot;
                }
            }
        }
        i = (i + 1) & mask;
    }
}

/* Lookup of an arbitrary object: NULL with no error when absent or not a str. */
static Slot *
lookup(StrIndex *self, PyObject *key)
{
    if (!PyUnicode_Check(key) || READY(key) < 0) {
        return NULL;
    }
    /* The str hash of the text, also for a subclass that defines its own __hash__. */
    return find(self, key, PyUnicode_Type.tp_hash(key));
}

static int
insert(StrIndex *self, PyObject *key, PyObject *value)
{
    if (READY(key) < 0) {
        return -1;
    }
    Py_hash_t hash = PyUnicode_Type.tp_hash(key);
    Slot *existing = find(self, key, hash);
    if (existing != NULL) {
        Py_INCREF(value);
        Py_SETREF(existing->value, value);
        return 0;
    }
    size_t i = (size_t)hash & self->mask;
    while (self->control[i] != 0) {
        i = (i + 1) & self->mask;
    }
    Slot *slot = &self->slots[i];
    slot->hash = hash;
    slot->key = Py_NewRef(key);
    slot->value = Py_NewRef(value);
    size_t size = (size_t)PyUnicode_GET_LENGTH(key) * (size_t)PyUnicode_KIND(key);
    if (size <= INLINE_BYTES) {
        slot->size = (uint16_t)size;
        slot->kind = (uint8_t)PyUnicode_KIND(key);
        memcpy(slot->data, PyUnicode_DATA(key), size);
    }
    else {
        slot->size = UINT16_MAX;
    }
    self->control[i] = tag_of(hash);
    self->used++;
    return 0;
}

static int
strindex_clear(StrIndex *self)
{
    Slot *slots = self->slots;
    uint8_t *control = self->control;
    size_t count = slots == NULL ? 0 : self->mask + 1;
    self->slots = NULL;
    self->control = NULL;
    self->used = 0;
    for (size_t i = 0; i < count; i++) {
        if (control[i] != 0) {
            Py_CLEAR(slots[i].key);
            Py_CLEAR(slots[i].value);
        }
    }
    PyMem_RawFree(control);
    free(slots);
    return 0;
}

static int
strindex_traverse(StrIndex *self, visitproc visit, void *arg)
{
    if (self->slots == NULL) {
        return 0;
    }
    for (size_t i = 0; i <= self->mask; i++) {
        if (self->control[i] != 0) {
            Py_VISIT(self->slots[i].value);
        }
    }
    return 0;
}

static void
strindex_dealloc(StrIndex *self)
{
    PyObject_GC_UnTrack(self);
    strindex_clear(self);
    PyTypeObject *type = Py_TYPE(self);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

static PyObject *
strindex_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *items;
    static char *names[] = {"items", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O:StrIndex", names, &items)) {
        return NULL;
    }
    /* As dict() does: a mapping is what has keys(); anything else is iterated for pairs. */
    int mapping = PyObject_HasAttrString(items, "keys");
    PyObject *pairs = mapping ? PyMapping_Items(items) : PySequence_List(items);
    if (pairs == NULL) {
        return NULL;
    }
    Py_ssize_t count = PyList_GET_SIZE(pairs);
    StrIndex *self = (StrIndex *)type->tp_alloc(type, 0);
    if (self == NULL) {
        Py_DECREF(pairs);
        return NULL;
    }
    /* At most three slots in four used: an absent key's probe ends within a few control bytes. */
    size_t slots = 8;
    while (slots * 3 < (size_t)count * 4) {
        slots *= 2;
    }
    self->mask = slots - 1;
    self->control = PyMem_RawCalloc(slots, 1);
    self->slots = aligned_alloc(64, slots * sizeof(Slot));
    if (self->control == NULL || self->slots == NULL) {
        PyMem_RawFree(self->control);
        free(self->slots);
        self->control = NULL;
        self->slots = NULL;
        Py_DECREF(pairs);
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    memset(self->slots, 0, slots * sizeof(Slot));
    for (Py_ssize_t n = 0; n < count; n++) {
        PyObject *pair = PyList_GET_ITEM(pairs, n);
        PyObject *key, *value;
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_Format(PyExc_TypeError, "StrIndex: item %zd is not a (key, value) pair", n);
            goto error;
        }
        key = PyTuple_GET_ITEM(pair, 0);
        value = PyTuple_GET_ITEM(pair, 1);
        if (!PyUnicode_Check(key)) {
            PyErr_Format(PyExc_TypeError, "StrIndex: key %R is not a str", key);
            goto error;
        }
        if (insert(self, key, value) < 0) {
            goto error;
        }
    }
    Py_DECREF(pairs);
    return (PyObject *)self;
error:
    Py_DECREF(pairs);
    Py_DECREF(self);
    return NULL;
}

static PyObject *
strindex_get(StrIndex *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_Format(PyExc_TypeError, "get expected 1 or 2 arguments, got %zd", nargs);
        return NULL;
    }
    Slot *slot = lookup(self, args[0]);
    if (slot != NULL) {
        return Py_NewRef(slot->value);
    }
    if (PyErr_Occurred()) {
        return NULL;
    }
    return Py_NewRef(nargs == 2 ? args[1] : Py_None);
}

static Py_ssize_t
strindex_length(StrIndex *self)
{
    return self->used;
}

static PyObject *
strindex_subscript(StrIndex *self, PyObject *key)
{
    Slot *slot = lookup(self, key);
    if (slot != NULL) {
        return Py_NewRef(slot->value);
    }
    if (!PyErr_Occurred()) {
        PyErr_SetObject(PyExc_KeyError, key);
    }
    return NULL;
}

static int
strindex_contains(StrIndex *self, PyObject *key)
{
    Slot *slot = lookup(self, key);
    if (slot == NULL && PyErr_Occurred()) {
        return -1;
    }
    return slot != NULL;
}

enum { KEYS, VALUES, ITEMS };

/* A list of the keys, values or (key, value) pairs, in slot order. */
static PyObject *
collect(StrIndex *self, int what)
{
    PyObject *list = PyList_New(0);
    if (list == NULL || self->slots == NULL) {
        return list;
    }
    for (size_t i = 0; i <= self->mask; i++) {
        if (self->control[i] == 0) {
            continue;
        }
        Slot *slot = &self->slots[i];
        PyObject *item = what == KEYS ? Py_NewRef(slot->key)
            : what == VALUES ? Py_NewRef(slot->value)
            : PyTuple_Pack(2, slot->key, slot->value);
        if (item == NULL || PyList_Append(list, item) < 0) {
            Py_XDECREF(item);
            Py_DECREF(list);
            return NULL;
        }
        Py_DECREF(item);
    }
    return list;
}

static PyObject *
strindex_keys(StrIndex *self, PyObject *Py_UNUSED(ignored))
{
    return collect(self, KEYS);
}

static PyObject *
strindex_values(StrIndex *self, PyObject *Py_UNUSED(ignored))
{
    return collect(self, VALUES);
}

static PyObject *
strindex_items(StrIndex *self, PyObject *Py_UNUSED(ignored))
{
    return collect(self, ITEMS);
}

static PyObject *
strindex_iter(StrIndex *self)
{
    PyObject *keys = collect(self, KEYS);
    if (keys == NULL) {
        return NULL;
    }
    PyObject *iterator = PyObject_GetIter(keys);
    Py_DECREF(keys);
    return iterator;
}

static PyObject *
strindex_sizeof(StrIndex *self, PyObject *Py_UNUSED(ignored))
{
    size_t size = (size_t)Py_TYPE(self)->tp_basicsize;
    if (self->slots != NULL) {
        size += (self->mask + 1) * (sizeof(Slot) + 1); /* slots and control bytes */
    }
    return PyLong_FromSize_t(size);
}

static PyMethodDef strindex_methods[] = {
    {"__sizeof__", (PyCFunction)strindex_sizeof, METH_NOARGS,
     "Size in memory in bytes, with the slots and control bytes (not the keys and values)."},
    {"get", (PyCFunction)(void (*)(void))strindex_get, METH_FASTCALL,
     "get(key, default=None): the value of key, or default."},
    {"keys", (PyCFunction)strindex_keys, METH_NOARGS,
     "keys(): a list of the keys, in no particular order."},
    {"values", (PyCFunction)strindex_values, METH_NOARGS,
     "values(): a list of the values, in the order of keys()."},
    {"items", (PyCFunction)strindex_items, METH_NOARGS,
     "items(): a list of the (key, value) pairs, in the order of keys()."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot strindex_type_slots[] = {
    {Py_tp_doc, "StrIndex(items): an immutable map of str keys (a mapping or (key, value) "
                "pairs), one cache line per lookup."},
    {Py_tp_new, strindex_new},
    {Py_tp_dealloc, strindex_dealloc},
    {Py_tp_traverse, strindex_traverse},
    {Py_tp_clear, strindex_clear},
    {Py_tp_iter, strindex_iter},
    {Py_tp_methods, strindex_methods},
    {Py_mp_length, strindex_length},
    {Py_mp_subscript, strindex_subscript},
    {Py_sq_contains, strindex_contains},
    {0, NULL},
};

static PyType_Spec strindex_spec = {
    .name = "proxy._native.StrIndex",
    .basicsize = sizeof(StrIndex),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = strindex_type_slots,
};

/* -- Schedule ---------------------------------------------------------------------------- */

typedef struct {
    PyObject_VAR_HEAD   /* ob_size: the number of bounds */
    PyObject *unordered; /* the value for a time that compares with nothing (NaN) */
    PyObject **values;   /* ob_size + 1 values, after the bounds */
    double bounds[1];    /* ascending */
} Schedule;

static PyObject *
schedule_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *bounds_arg, *values_arg, *unordered;
    static char *names[] = {"bounds", "values", "unordered", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO:Schedule", names, &bounds_arg,
                                     &values_arg, &unordered)) {
        return NULL;
    }
    PyObject *bounds = PySequence_Tuple(bounds_arg);
    if (bounds == NULL) {
        return NULL;
    }
    PyObject *values = PySequence_Tuple(values_arg);
    if (values == NULL) {
        Py_DECREF(bounds);
        return NULL;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(bounds);
    Schedule *self = NULL;
    if (PyTuple_GET_SIZE(values) != n + 1) {
        PyErr_Format(PyExc_ValueError, "Schedule: %zd values for %zd bounds (expected %zd)",
                     PyTuple_GET_SIZE(values), n, n + 1);
        goto done;
    }
    /* bounds, then values, after the fixed part: one allocation (itemsize 1 byte). */
    Py_ssize_t extra = n * (Py_ssize_t)sizeof(double) + (n + 1) * (Py_ssize_t)sizeof(PyObject *);
    self = (Schedule *)type->tp_alloc(type, extra);
    if (self == NULL) {
        goto done;
    }
    Py_SET_SIZE(self, n);
    self->values = (PyObject **)((char *)self->bounds + n * sizeof(double));
    for (Py_ssize_t i = 0; i <= n; i++) {
        self->values[i] = NULL;
    }
    self->unordered = Py_NewRef(unordered);
    for (Py_ssize_t i = 0; i < n; i++) {
        double bound = PyFloat_AsDouble(PyTuple_GET_ITEM(bounds, i));
        if (bound == -1.0 && PyErr_Occurred()) {
            Py_CLEAR(self);
            goto done;
        }
        if (isnan(bound) || (i > 0 && !(self->bounds[i - 1] < bound))) {
            PyErr_Format(PyExc_ValueError, "Schedule: bounds %R are not strictly ascending",
                         bounds);
            Py_CLEAR(self);
            goto done;
        }
        self->bounds[i] = bound;
    }
    for (Py_ssize_t i = 0; i <= n; i++) {
        self->values[i] = Py_NewRef(PyTuple_GET_ITEM(values, i));
    }
done:
    Py_DECREF(bounds);
    Py_DECREF(values);
    return (PyObject *)self;
}

static int
schedule_clear(Schedule *self)
{
    Py_CLEAR(self->unordered);
    if (self->values != NULL) {
        for (Py_ssize_t i = 0; i <= Py_SIZE(self); i++) {
            Py_CLEAR(self->values[i]);
        }
    }
    return 0;
}

static int
schedule_traverse(Schedule *self, visitproc visit, void *arg)
{
    Py_VISIT(self->unordered);
    if (self->values != NULL) {
        for (Py_ssize_t i = 0; i <= Py_SIZE(self); i++) {
            Py_VISIT(self->values[i]);
        }
    }
    return 0;
}

static void
schedule_dealloc(Schedule *self)
{
    PyObject_GC_UnTrack(self);
    schedule_clear(self);
    PyTypeObject *type = Py_TYPE(self);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

static PyObject *
schedule_at(Schedule *self, PyObject *arg)
{
    double now;
    if (PyFloat_CheckExact(arg)) {
        now = PyFloat_AS_DOUBLE(arg);
    }
    else {
        now = PyFloat_AsDouble(arg);
        if (now == -1.0 && PyErr_Occurred()) {
            return NULL;
        }
    }
    if (isnan(now)) {
        return Py_NewRef(self->unordered);
    }
    /* The number of bounds <= now (bisect_right): few bounds, so a scan. */
    Py_ssize_t i = 0, n = Py_SIZE(self);
    while (i < n && self->bounds[i] <= now) {
        i++;
    }
    return Py_NewRef(self->values[i]);
}

static PyObject *
schedule_bounds(Schedule *self, void *Py_UNUSED(closure))
{
    PyObject *tuple = PyTuple_New(Py_SIZE(self));
    for (Py_ssize_t i = 0; tuple != NULL && i < Py_SIZE(self); i++) {
        PyObject *bound = PyFloat_FromDouble(self->bounds[i]);
        if (bound == NULL) {
            Py_CLEAR(tuple);
            break;
        }
        PyTuple_SET_ITEM(tuple, i, bound);
    }
    return tuple;
}

static PyObject *
schedule_values(Schedule *self, void *Py_UNUSED(closure))
{
    PyObject *tuple = PyTuple_New(Py_SIZE(self) + 1);
    for (Py_ssize_t i = 0; tuple != NULL && i <= Py_SIZE(self); i++) {
        PyTuple_SET_ITEM(tuple, i, Py_NewRef(self->values[i]));
    }
    return tuple;
}

static PyObject *
schedule_unordered(Schedule *self, void *Py_UNUSED(closure))
{
    return Py_NewRef(self->unordered);
}

static PyObject *
schedule_sizeof(Schedule *self, PyObject *Py_UNUSED(ignored))
{
    Py_ssize_t n = Py_SIZE(self);
    return PyLong_FromSsize_t(Py_TYPE(self)->tp_basicsize + n * (Py_ssize_t)sizeof(double)
                              + (n + 1) * (Py_ssize_t)sizeof(PyObject *));
}

static PyMethodDef schedule_methods[] = {
    {"__sizeof__", (PyCFunction)schedule_sizeof, METH_NOARGS,
     "Size in memory in bytes (not the values)."},
    {"at", (PyCFunction)schedule_at, METH_O,
     "at(now): the value that holds at now: values[i] where i bounds are <= now "
     "(unordered for NaN)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef schedule_getset[] = {
    {"bounds", (getter)schedule_bounds, NULL, "The bounds, ascending.", NULL},
    {"values", (getter)schedule_values, NULL, "The values, one more than the bounds.", NULL},
    {"unordered", (getter)schedule_unordered, NULL, "The value for NaN.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot schedule_type_slots[] = {
    {Py_tp_doc, "Schedule(bounds, values, unordered): which value holds at a time; values has "
                "one more item than bounds (strictly ascending), unordered is for NaN."},
    {Py_tp_new, schedule_new},
    {Py_tp_dealloc, schedule_dealloc},
    {Py_tp_traverse, schedule_traverse},
    {Py_tp_clear, schedule_clear},
    {Py_tp_methods, schedule_methods},
    {Py_tp_getset, schedule_getset},
    {0, NULL},
};

static PyType_Spec schedule_spec = {
    .name = "proxy._native.Schedule",
    .basicsize = offsetof(Schedule, bounds),
    .itemsize = 1,
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = schedule_type_slots,
};

/* -- module --------------------------------------------------------------------------------- */

static int
add_type(PyObject *module, PyType_Spec *spec, const char *name)
{
    PyObject *type = PyType_FromModuleAndSpec(module, spec, NULL);
    if (type == NULL) {
        return -1;
    }
    int result = PyModule_AddObjectRef(module, name, type);
    Py_DECREF(type);
    return result;
}

static int
module_exec(PyObject *module)
{
    if (add_type(module, &strindex_spec, "StrIndex") < 0) {
        return -1;
    }
    return add_type(module, &schedule_spec, "Schedule");
}

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "proxy._native",
    .m_doc = "The gate's native parts: StrIndex (meeting ids) and Schedule (windows).",
    .m_size = 0,
    .m_slots = module_slots,
};

PyMODINIT_FUNC
PyInit__native(void)
{
    return PyModuleDef_Init(&module_def);
}
