"""``llavakit.utils.optim.adamw``: the fused kernel on the CPU, the same update as PyTorch's default."""

from __future__ import annotations

import torch

from llavakit.utils.optim import adamw


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(12, 32), torch.nn.GELU(), torch.nn.LayerNorm(32), torch.nn.Linear(32, 5))


def test_cpu_parameters_get_the_fused_kernel_and_the_same_updates():
    fused_model, plain_model = _model(0), _model(0)
    groups = [{"params": list(fused_model[0].parameters()), "lr": 1e-2, "weight_decay": 0.1},
              {"params": list(fused_model[3].parameters()) + list(fused_model[2].parameters()), "lr": 3e-3}]
    fused = adamw(groups, betas=(0.9, 0.95), eps=1e-8)
    assert fused.defaults["fused"] is True
    plain = torch.optim.AdamW([{"params": list(plain_model[0].parameters()), "lr": 1e-2, "weight_decay": 0.1},
                               {"params": list(plain_model[3].parameters()) + list(plain_model[2].parameters()),
                                "lr": 3e-3}], betas=(0.9, 0.95), eps=1e-8)
    assert not plain.defaults["fused"]
    generator = torch.Generator().manual_seed(1)
    for _ in range(20):
        x, y = torch.randn(16, 12, generator=generator), torch.randint(0, 5, (16,), generator=generator)
        for model, optimizer in ((fused_model, fused), (plain_model, plain)):
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    for got, expected in zip(fused_model.parameters(), plain_model.parameters()):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_a_parameter_off_the_fused_devices_keeps_the_default():
    weight = torch.nn.Parameter(torch.zeros(3, device="meta"))
    assert not adamw([weight], lr=1e-3).defaults["fused"]
