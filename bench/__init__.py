"""floatkey benchmarks: each figure beside raw MQTT on the same broker, in the same run."""
