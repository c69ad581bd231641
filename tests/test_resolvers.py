from omegaconf import OmegaConf

from dcn import resolvers


def test_uid_is_fresh_per_config_and_stable_within_one():
    resolvers.register()
    resolvers.register()  # idempotent
    a = OmegaConf.create({"dir": "run_${dcn.uid:}", "again": "${dir}", "direct": "${dcn.uid:}"})
    b = OmegaConf.create({"dir": "run_${dcn.uid:}"})
    assert a.dir == a.dir == a.again and a.direct == a.dir[len("run_") :]
    assert a.dir != b.dir
    assert len(a.direct) == 6 and int(a.direct, 16) >= 0


def test_sweep_dir_resolves_before_hydra_runtime_exists(tmp_path, monkeypatch):
    """The multirun sweeper resolves hydra.sweep.dir before HydraConfig is set (no hydra:runtime)."""
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    resolvers.register()
    monkeypatch.delenv("DCN_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    conf_dir = Path(__file__).resolve().parents[1] / "src" / "dcn" / "conf"
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        cfg = compose(config_name="train", return_hydra_config=True)
    sweep_dir = cfg.hydra.sweep.dir  # resolves paths.root_dir; subdir (job.num) stays unresolved
    assert str(sweep_dir).startswith(str(Path.cwd())) and "multiruns" in str(sweep_dir)
