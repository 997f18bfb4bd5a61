//! telemetry: placeholder until implemented.
