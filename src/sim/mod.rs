//! The simulated controller (SPEC §2): the MrCoffeeBot firmware's protocol and timing with a
//! simple thermal and water model, on a real pseudo-terminal, with fault injection for tests.
