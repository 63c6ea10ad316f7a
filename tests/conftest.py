"""Shared fixtures live in tests/fixtures/*; each module is a pytest plugin listed here."""

pytest_plugins = [
    "tests.fixtures.daemons",  # real dockerd and swtpm
    "tests.fixtures.gptdisk",  # GPT disk images made with sgdisk
    "tests.fixtures.nspawn",  # real systemd as PID 1 in systemd-nspawn
    "tests.fixtures.flatcar",  # the real flatcar/scripts trees, cloned once per session
    "tests.fixtures.fakesdk",  # a checkout of a real tree with recording stand-ins for the SDK
]
