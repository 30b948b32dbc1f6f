import pytest

import harness


@pytest.fixture
def emulator(tmp_path):
    emu = harness.Emulator(tmp_path)
    yield emu
    emu.stop()


@pytest.fixture
def fallback(tmp_path):
    """A second emulator: the fallback cluster of envoy.yaml's openai-chat route."""
    d = tmp_path / "fallback"
    d.mkdir()
    emu = harness.Emulator(d)
    yield emu
    emu.stop()


@pytest.fixture
def pair(emulator, fallback):
    """(primary, fallback) emulators with their own per-key limits out of the way."""
    for e in (emulator, fallback):
        e.faults(rpm=100_000_000, tpm=1_000_000_000)
    return emulator, fallback


@pytest.fixture
def start_envoy(tmp_path, emulator):
    """Starts Envoy from envoy/envoy.yaml (optionally with another plugin config)."""
    started = []

    def start(plugin=None, name="envoy", expect_start=True, base=None, concurrency=2, args=(), ports=None):
        cfg = harness.localize(base or harness.load_envoy_config(), emulator.api_port, ports)
        if plugin is not None:
            harness.set_plugin_config(cfg, plugin)
        env = harness.Envoy(tmp_path, cfg, name=name, expect_start=expect_start, concurrency=concurrency,
                            args=args)
        started.append(env)
        return env

    yield start
    for e in started:
        e.stop()


def pytest_sessionfinish(session, exitstatus):
    harness.stop_all()
