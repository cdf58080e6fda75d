"""Pure decision logic: no I/O, no clocks, no globals."""
