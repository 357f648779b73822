"""The fleet protocol: topics, message schemas, the MQTT link, artifact transfer, command jobs, operator side."""
