"""Pure decision core: regions, restrictions, decisions and the gate. No I/O, no clocks."""
