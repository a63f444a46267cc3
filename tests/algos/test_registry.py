"""Choosing estimators and losses by name, through one common signature per kind."""

from __future__ import annotations

import pytest
import torch

from tandem.algos import (
    ADV_ESTIMATORS,
    Registry,
    compute_gae,
    get_adv_est,
    get_kl_estimator,
    get_policy_loss,
    get_preference_loss,
    kl_k3,
    policy_loss,
    reinforce_pp_returns,
)

F64 = torch.float64


def _batch() -> dict:
    # Two prompts x two samples. Response lengths 3, 2, 1, 3 (T = 3).
    token_rewards = torch.tensor(
        [[0.1, 0.2, 1.0], [0.0, 3.0, 8.0], [2.0, 9.0, 9.0], [-0.5, 0.0, 0.5]], dtype=F64
    )
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]])
    return {
        "token_rewards": token_rewards,
        "values": torch.full((4, 3), 0.5, dtype=F64),
        "mask": mask,
        "group_size": 2,
        "gamma": 1.0,
        "lam": 0.95,
    }


def test_grpo_estimator_by_hand() -> None:
    # Sequence returns (masked sums): 1.3, 3.0 | 2.0, 0.0.
    # Group (1.3, 3.0): mean 2.15, unbiased std 0.85 * sqrt 2 = 1.202082 -> -/+ 0.85 / (1.202082 + 1e-6).
    # Group (2.0, 0.0): mean 1, std sqrt 2 -> +/- 1 / (sqrt 2 + 1e-6).
    batch = _batch()
    advantages, returns = get_adv_est("grpo")(**batch)
    a = 0.85 / (0.85 * 2**0.5 + 1e-6)
    c = 1 / (2**0.5 + 1e-6)
    expected = torch.tensor([[-a, -a, -a], [a, a, 0.0], [c, 0.0, 0.0], [-c, -c, -c]], dtype=F64)
    torch.testing.assert_close(advantages, expected)
    torch.testing.assert_close(returns, expected)


def test_rloo_estimator_by_hand() -> None:
    # With groups of two, RLOO is the difference to the other sample: -1.7, 1.7 | 2, -2.
    advantages, returns = get_adv_est("rloo")(**_batch())
    expected = torch.tensor(
        [[-1.7, -1.7, -1.7], [1.7, 1.7, 0.0], [2.0, 0.0, 0.0], [-2.0, -2.0, -2.0]], dtype=F64
    )
    torch.testing.assert_close(advantages, expected)
    torch.testing.assert_close(returns, expected)


def test_gae_and_reinforce_pp_estimators_delegate() -> None:
    batch = _batch()
    for got, want in (
        (
            get_adv_est("gae")(**batch),
            compute_gae(batch["token_rewards"], batch["values"], batch["mask"], 1.0, 0.95),
        ),
        (
            get_adv_est("reinforce++")(**batch),
            reinforce_pp_returns(batch["token_rewards"], batch["mask"], 1.0),
        ),
    ):
        for got_tensor, want_tensor in zip(got, want, strict=True):
            torch.testing.assert_close(got_tensor, want_tensor)


def test_critic_free_estimators_accept_no_values() -> None:
    batch = _batch() | {"values": None}
    for name in ("grpo", "rloo", "reinforce++"):
        advantages, _ = get_adv_est(name)(**batch)
        assert advantages.shape == (4, 3)
        assert (advantages[batch["mask"] == 0] == 0).all()
    with pytest.raises(ValueError, match="critic values"):
        get_adv_est("gae")(**batch)


def test_unknown_names_list_valid_ones() -> None:
    with pytest.raises(KeyError, match=r"\['gae', 'grpo', 'reinforce\+\+', 'rloo'\]"):
        get_adv_est("vtrace")
    with pytest.raises(KeyError, match="'k1', 'k2', 'k3'"):
        get_kl_estimator("k9")
    with pytest.raises(KeyError, match="'ppo'"):
        get_policy_loss("sppo")
    with pytest.raises(KeyError, match=r"preference loss 'kto'; valid names: \['dpo', 'ipo', 'simpo'\]"):
        get_preference_loss("kto")


def test_gae_needs_a_critic_and_the_critic_free_ones_do_not() -> None:
    # The PPO roles start a critic exactly when the estimator reads values.
    assert get_adv_est("gae").needs_critic is True
    assert [get_adv_est(name).needs_critic for name in ("grpo", "rloo", "reinforce++")] == [False] * 3
    assert all(isinstance(get_adv_est(name).needs_critic, bool) for name in ADV_ESTIMATORS.names())


def test_lookups_return_the_registered_functions() -> None:
    assert get_kl_estimator("k3") is kl_k3
    assert get_policy_loss("ppo") is policy_loss


def test_registry_registers_once() -> None:
    registry: Registry = Registry("widget")

    @registry.register("a")
    def widget() -> int:
        return 1

    assert registry.get("a") is widget
    assert registry.names() == ["a"]
    with pytest.raises(ValueError, match="'a' is already registered"):
        registry.register("a")(widget)
