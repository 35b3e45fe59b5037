"""Tests of the load tester (servewise.bench); they mirror src/servewise/bench."""
