"""kafkaloop's benchmarks: each prints a table, writes CSV, and runs its baseline alongside."""
