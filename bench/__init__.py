"""kafkaloop's benchmarks: each prints a table, writes CSV, and measures its baseline in the same run."""
