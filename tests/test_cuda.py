"""Checks that need a CUDA device (and, for some, mamba_ssm's compiled kernels); skipped cleanly elsewhere.

benchmarks/gpu_check.sh runs this file on a CUDA machine, before and after building mamba-ssm.
"""

import pytest
import torch
from conftest import SMALL_MIXER_KWARGS

from speechbrain_ext.mixers import MIXERS, build_mixer
from speechbrain_ext.mixers.mamba import cuda_selective_scan
from speechbrain_ext.mixers.scan import selective_scan
from speechbrain_ext.models.encoder import MixerConformerEncoder

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
needs_kernels = pytest.mark.skipif(not torch.cuda.is_available() or cuda_selective_scan() is None,
                                   reason="needs mamba_ssm's CUDA kernels")


def scan_inputs(batch=2, channels=64, states=16, length=300, device="cuda"):
    generator = torch.Generator().manual_seed(0)

    def tensor(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=generator)).to(device).requires_grad_()

    return {"u": tensor(batch, channels, length), "delta": tensor(batch, channels, length, scale=0.5),
            "A": (-torch.rand(channels, states, generator=generator) - 0.5).to(device).requires_grad_(),
            "B": tensor(batch, states, length), "C": tensor(batch, states, length), "D": tensor(channels),
            "z": tensor(batch, channels, length), "delta_bias": tensor(channels, scale=0.1)}


@needs_kernels
def test_mamba_ssm_kernel_equals_our_scan_forward_and_backward():
    inputs = scan_inputs()
    outputs = {}
    for name, scan in (("ours", selective_scan), ("kernel", cuda_selective_scan())):
        for tensor in inputs.values():
            tensor.grad = None
        out = scan(**inputs, delta_softplus=True)
        out.pow(2).mean().backward()
        outputs[name] = (out.detach(), {key: t.grad.clone() for key, t in inputs.items()})
    torch.testing.assert_close(outputs["kernel"][0], outputs["ours"][0], rtol=1e-4, atol=1e-4)
    for key in inputs:
        torch.testing.assert_close(outputs["kernel"][1][key], outputs["ours"][1][key], rtol=1e-3, atol=1e-3,
                                   msg=f"gradient of {key}")


@needs_kernels
def test_bidirectional_mamba_on_a_padded_batch_is_the_same_with_and_without_kernels():
    mixer = build_mixer("mamba", 64, 4, d_state=16).cuda()
    x = torch.randn(3, 120, 64, device="cuda")
    mask = torch.arange(120, device="cuda").unsqueeze(0) >= torch.tensor([120, 77, 5], device="cuda").unsqueeze(1)
    results = []
    for use_kernels in (True, False):
        for module in mixer.modules():
            if hasattr(module, "use_cuda_kernels"):
                module.use_cuda_kernels = use_kernels
        mixer.zero_grad()
        out, _ = mixer(x, x, x, key_padding_mask=mask)
        out[~mask].pow(2).mean().backward()
        results.append((out[~mask].detach(), [p.grad.clone() for p in mixer.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-4, atol=1e-4)
    for kernel_grad, scan_grad in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(kernel_grad, scan_grad, rtol=1e-3, atol=1e-3)


@needs_cuda
@pytest.mark.parametrize("name", list(MIXERS))
def test_every_mixer_trains_under_bf16_autocast_on_cuda(name):
    encoder = MixerConformerEncoder(2, 64, 128, 4, mixer=name, mixer_kwargs=SMALL_MIXER_KWARGS[name]).cuda()
    x = torch.randn(2, 400, 64, device="cuda")
    mask = torch.zeros(2, 400, dtype=torch.bool, device="cuda")
    mask[1, 250:] = True
    reference, _ = encoder.eval()(x, src_key_padding_mask=mask)
    encoder.train()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out, _ = encoder(x, src_key_padding_mask=mask)
    out.float()[~mask].pow(2).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in encoder.parameters() if p.requires_grad)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        low, _ = encoder.eval()(x, src_key_padding_mask=mask)
    assert (low.float() - reference)[~mask].abs().mean() < 0.05


@needs_cuda
def test_sdpa_attention_on_cuda_equals_the_cpu_in_float32():
    mixer = build_mixer("mhsa_flash", 64, 4).eval()
    x = torch.randn(2, 300, 64)
    mask = torch.zeros(2, 300, dtype=torch.bool)
    mask[1, 180:] = True
    expected, _ = mixer(x, x, x, key_padding_mask=mask)
    got, _ = mixer.cuda()(x.cuda(), x.cuda(), x.cuda(), key_padding_mask=mask.cuda())
    torch.testing.assert_close(got.cpu()[~mask], expected[~mask], rtol=1e-4, atol=1e-4)


@needs_cuda
def test_a_bench_point_runs_on_cuda():
    from speechbrain_ext.bench.speed_memory import Point, measure

    point = measure(Point("fastformer", 10.0, batch=2, mode="train", dtype="float16", device="cuda", layers=2,
                          warmup=1, repeats=2))
    assert point.status == "ok", point.error
    assert point.ms > 0 and point.peak_mib > point.model_mib > 0


@needs_cuda
def test_the_paper_protocol_runs_on_cuda_in_fp16(tmp_path):
    """Figure 1's protocol on the GPU: a tiny sweep, fp16 autocast, max_memory_allocated per call."""
    from speechbrain_ext.bench.paper_protocol import main

    points = main(["--size", "base", "--mixers", "fastformer", "mamba", "--layers", "2", "--seconds", "2", "4",
                   "--batch", "2", "--warmup-rounds", "1", "--calls", "2", "--output", str(tmp_path)])
    assert [p.status for p in points] == ["ok"] * 4, [p.error for p in points]
    assert all(p.dtype == "float16" and p.device == "cuda" for p in points)
    assert (tmp_path / "figure1.png").is_file()


@needs_cuda
def test_speech_encoder_fast_implementation_on_cuda_equals_the_cpu():
    # The fast front-end's channels-last convolutions run on cuDNN there, the depthwise ones fall
    # back to F.conv1d and dropout to F.dropout: the same encoding as on the CPU.
    from speechbrain_ext.models.speech_encoder import SpeechEncoder

    torch.manual_seed(0)
    encoder = SpeechEncoder("mamba", num_layers=2, d_model=64, d_ffn=128, nhead=4).eval()
    wavs, lens = torch.randn(2, 32000), torch.tensor([1.0, 0.55])
    with torch.no_grad():
        expected = encoder(wavs, lens).out
        tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        try:
            got = encoder.cuda()(wavs.cuda(), lens.cuda()).out.cpu()
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    encoder.train()
    encoder(wavs.cuda(), lens.cuda()).out.pow(2).mean().backward()  # dropout on CUDA: F.dropout
    grads = [p.grad for p in encoder.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
