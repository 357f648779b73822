"""The calibration table: its format, its checks, diff, conversion to explicit Q/DQ, and computing one on the CPU."""
