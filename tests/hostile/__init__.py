"""The hostile-client suite: garbage, floods, Slowloris, resets, faults and fuzzing against
a real listener, with an ``openssl s_server`` yardstick. Run it with ``nox -s hostile``;
``docs/reliability.rst`` describes every case and shows the latest table."""
