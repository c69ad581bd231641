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
