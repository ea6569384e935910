//! The task that owns the serial port. SKELETON.
