"""Config schema: Hydra composition of every preset, and bad configs rejected naming the key."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf
from dataclasses import asdict

from rl.config import Config, OptimConfig, load_config, schema_defaults

CONF = Path(__file__).resolve().parents[2] / "conf"


def compose_config(overrides=()):
    ConfigStore.instance().store(name="config_schema", node=OmegaConf.create(asdict(Config())))
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        raw = compose(config_name="config", overrides=list(overrides))
    return OmegaConf.to_container(raw, resolve=True)


def test_default_config_is_the_tiny_cpu_run():
    cfg = load_config(compose_config())
    assert cfg.actor_rollout_ref.model.path == "tiny"
    assert cfg.trainer.device == "cpu"
    assert cfg.actor_rollout_ref.model.memento.enable


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF / "algorithm").glob("*.yaml")))
def test_every_algorithm_preset_validates(name):
    cfg = load_config(compose_config([f"algorithm={name}"]))
    assert cfg.algorithm.loss_mode in ("ppo", "cispo", "gspo")


def test_paper_preset_matches_the_paper_settings():
    cfg = load_config(compose_config(["+experiment=qwen3_8b_memento"]))
    algo, rollout = cfg.algorithm, cfg.actor_rollout_ref.rollout
    assert (algo.loss_mode, algo.clip_ratio_low, algo.clip_ratio_high) == ("cispo", 0.2, 0.2)
    assert algo.use_kl_loss and algo.kl_loss_coef == 0.001
    assert rollout.n == 8 and cfg.data.train_batch_size == 240
    assert cfg.actor_rollout_ref.actor.optim.lr == 1e-6 and rollout.temperature == 1.0
    assert cfg.data.max_response_length == 31744 and rollout.max_block_tokens == 7168


def test_command_line_override_reaches_the_schema():
    cfg = load_config(compose_config(["actor_rollout_ref.rollout.n=8", "data.train_batch_size=8",
                                      "actor_rollout_ref.actor.ppo_mini_batch_size=2"]))
    assert cfg.actor_rollout_ref.rollout.n == 8 and cfg.data.train_batch_size == 8


def test_unknown_key_on_the_command_line_is_rejected():
    with pytest.raises(Exception, match="clip_ratio_hgh"):
        compose_config(["algorithm.clip_ratio_hgh=0.3"])


@pytest.mark.parametrize("patch, message", [
    ({"data": {"train_batch_size": "eight"}}, "data.train_batch_size must be int"),
    ({"algorithm": {"clip_ratio_hgh": 0.3}}, "unknown key algorithm.clip_ratio_hgh"),
    ({"algorithm": {"adv_estimator": "ppo"}}, "algorithm.adv_estimator"),
    ({"actor_rollout_ref": {"actor": {"zero_stage": 4}}}, "actor_rollout_ref.actor.zero_stage"),
    ({"actor_rollout_ref": {"rollout": {"temperature": 0}}}, "actor_rollout_ref.rollout.temperature"),
    ({"data": {"train_batch_size": 6}}, "data.train_batch_size"),  # not a multiple of mini-batch 4
    ({"actor_rollout_ref": {"actor": {"ppo_max_token_len_per_gpu": 100}}}, "ppo_max_token_len_per_gpu"),
    ({"actor_rollout_ref": {"model": {"memento": {"keep_last_n_blocks": -3}}}},
     "actor_rollout_ref.model.memento.keep_last_n_blocks"),
    ({"actor_rollout_ref": {"model": {"memento": {"keep_last_block_for_answer": True,
                                                  "keep_last_n_blocks": 2}}}},
     "actor_rollout_ref.model.memento.keep_last_block_for_answer requires"),
    ({"trainer": {"overlap_rollout": True, "colocate": True}}, "trainer.overlap_rollout requires"),
    ({"trainer": {"logger": ["console", "tensorboard"]}}, "trainer.logger"),
])
def test_bad_values_are_rejected_naming_the_key(patch, message):
    raw = OmegaConf.to_container(OmegaConf.merge(OmegaConf.create(compose_config()),
                                                 OmegaConf.create(patch)))
    with pytest.raises((TypeError, ValueError), match=message.replace(".", r"\.")):
        load_config(raw)


def test_key_value_overrides_type_exponent_floats_and_nest():
    # YAML 1.1 reads "1e-4" as a string; Hydra's override grammar reads it as a float, so the
    # schema's float check accepts it.
    cfg = load_config(compose_config(["actor_rollout_ref.actor.optim.lr=1e-4",
                                      "algorithm.clip_ratio_high=2.5E-1",
                                      "actor_rollout_ref.rollout.n=3",
                                      "trainer.experiment_name=x1e5",
                                      "trainer.logger=[console]"]))
    assert cfg.actor_rollout_ref.actor.optim.lr == 1e-4
    assert cfg.algorithm.clip_ratio_high == 0.25 and cfg.actor_rollout_ref.rollout.n == 3
    assert cfg.trainer.experiment_name == "x1e5" and cfg.trainer.logger == ["console"]
    with pytest.raises(Exception, match="lr"):
        compose_config(["actor_rollout_ref.actor.optim.lr"])


def test_schema_defaults_do_not_build_the_schema():
    # SFTConfig rejects its own defaults (no train_files); its keys still reach Hydra.
    from rl.sft.train import SFTConfig

    values = schema_defaults(SFTConfig)
    assert values["train_files"] == [] and values["actor"]["optim"]["lr"] == 8e-5
    assert schema_defaults(Config) == asdict(Config())


def test_optim_config_built_in_code_rejects_an_unknown_scheduler():
    # The SFT runner and the demo build OptimConfig directly, past the schema's Literal check.
    with pytest.raises(ValueError, match="lr_scheduler_type must be 'constant' or 'cosine'"):
        OptimConfig(lr_scheduler_type="cosin")


def test_run_hydra_builds_the_schema_from_the_yaml_and_overrides(tmp_path):
    from rl.config import run_hydra
    from rl.sft.train import SFTConfig

    built = []
    run_hydra("sft", SFTConfig, built.append,
              [f"output_dir={tmp_path}", "actor.optim.lr=1e-4", "max_steps=3",
               "hydra/job_logging=none", "hydra/hydra_logging=none"])
    (cfg,) = built
    assert isinstance(cfg, SFTConfig) and cfg.actor.optim.lr == 1e-4 and cfg.max_steps == 3
    assert cfg.train_files == ["builtin:arith_sft"]  # from conf/sft.yaml


def test_a_message_that_names_its_key_gets_no_second_prefix():
    raw = OmegaConf.to_container(OmegaConf.merge(OmegaConf.create(compose_config()),
                                                 OmegaConf.create({"reward": {"math_workers": 0}})))
    with pytest.raises(ValueError) as err:
        load_config(raw)
    assert str(err.value) == "[reward.math_workers] must be > 0, got 0"


def test_the_reference_has_no_token_budget_of_its_own():
    # The reference scores with the actor's micro-batches (ppo_max_token_len_per_gpu).
    with pytest.raises(Exception, match="log_prob_max_token_len_per_gpu"):
        compose_config(["actor_rollout_ref.ref.log_prob_max_token_len_per_gpu=4096"])


def test_evaluation_and_sft_compose_the_trainer_sections():
    from rl.config import ActorConfig, ModelConfig, SamplingConfig, from_dict
    from rl.eval.evaluate import EvalConfig
    from rl.sft.train import SFTConfig

    sft = from_dict(SFTConfig, {"train_files": ["a.jsonl"], "model": {"dtype": "bfloat16"},
                                "actor": {"zero_stage": 2, "optim": {"lr": 1e-5}}})
    assert isinstance(sft.model, ModelConfig) and isinstance(sft.actor, ActorConfig)
    assert (sft.model.dtype, sft.actor.zero_stage, sft.actor.optim.lr) == ("bfloat16", 2, 1e-5)
    evaluation = from_dict(EvalConfig, {"sampling": {"n": 2, "temperature": 0.0}})
    assert isinstance(evaluation.sampling, SamplingConfig) and evaluation.sampling.top_k == 20
    with pytest.raises(ValueError, match=r"^sampling\.top_p must be in \(0, 1\]"):
        from_dict(EvalConfig, {"sampling": {"top_p": 0}})
    with pytest.raises(ValueError, match=r"^memento\.keep_last_n_blocks must be >= -1"):
        from_dict(EvalConfig, {"memento": {"keep_last_n_blocks": -2}})
