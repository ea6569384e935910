//! The heater state machine. SKELETON.
