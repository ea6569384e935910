//! Wires the tasks together. SKELETON.
