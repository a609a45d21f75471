"""Scraper and normaliser tests on the real telemetry fixtures (values read from the files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gtm.agent.daemon import replica_load, source_spare
from gtm.agent.scrape import (
    CRITICAL_XIDS,
    EngineSample,
    GpuSample,
    normalise,
    normalise_dcgm,
    normalise_sglang,
    normalise_tgi,
    normalise_triton,
    normalise_vllm,
    parse_exposition,
)
from gtm.errors import ScrapeError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "telemetry"
SIM_SAMPLES = Path(__file__).resolve().parents[2] / "gtm" / "sim" / "samples"


def load(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def engine(kind: str, name: str, hint: str | None = None) -> EngineSample:
    sample = normalise(kind, parse_exposition(load(name)), hint)
    assert isinstance(sample, EngineSample)
    return sample


def gpu(name: str) -> GpuSample:
    return normalise_dcgm(parse_exposition(load(name)))


# -- every real fixture ---------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.prom")), ids=lambda p: p.name)
def test_every_fixture_parses_and_normalises(path: Path) -> None:
    kind = path.name.split("-", 1)[0]
    sample = normalise(kind, parse_exposition(path.read_text(encoding="utf-8")))
    assert isinstance(sample, GpuSample if kind == "dcgm" else EngineSample)


def test_vllm_v0_plus_v1_lines_prefers_kv_cache_usage_perc() -> None:
    # File: kv_cache_usage_perc 0.0 and gpu_cache_usage_perc 0.0, waiting 0.0, running 0.0,
    # generation_tokens_total 7.0, prompt_tokens_total 5.0, finished_reason only "length".
    s = engine("vllm", "vllm-0.4.3-plus-v1-lines-datadog-fixture.prom")
    assert s.model == "facebook/opt-125m"
    assert (s.running, s.waiting, s.kv_usage) == (0.0, 0.0, 0.0)
    assert s.generation_tokens == 7.0
    assert s.progress == 12.0
    assert s.errors == 0.0


def test_vllm_07_v0_falls_back_to_gpu_cache_usage_perc() -> None:
    text = load("vllm-0.7-v0-aibrix-runtime-docs-excerpt.prom")
    exp = parse_exposition(text)
    assert not exp.has("vllm:kv_cache_usage_perc")
    assert exp.has("vllm:gpu_cache_usage_perc")
    s = normalise_vllm(exp)
    assert s.model == "Qwen/Qwen2.5-Coder-1.5B-Instruct"
    assert s.kv_usage == 0.0
    assert s.generation_tokens == 955.0
    assert s.errors == 0.0  # request_success_total only has finished_reason="stop" (4.0)


def test_vllm_old_and_new_kv_names() -> None:
    old = """# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="m"} 0.42
"""
    both = (
        old
        + """# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{model_name="m"} 0.61
"""
    )
    assert normalise_vllm(parse_exposition(old)).kv_usage == 0.42
    assert normalise_vllm(parse_exposition(both)).kv_usage == 0.61


MULTI_ENGINE = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="llama"} 3.0
vllm:num_requests_running{engine="1",model_name="llama"} 5.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="llama"} 2.0
vllm:num_requests_waiting{engine="1",model_name="llama"} 7.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="llama"} 0.3
vllm:kv_cache_usage_perc{engine="1",model_name="llama"} 0.6
# TYPE vllm:generation_tokens counter
vllm:generation_tokens_total{engine="0",model_name="llama"} 1000.0
vllm:generation_tokens_created{engine="0",model_name="llama"} 1.7e9
vllm:generation_tokens_total{engine="1",model_name="llama"} 2500.0
vllm:generation_tokens_created{engine="1",model_name="llama"} 1.7e9
# TYPE vllm:request_success counter
vllm:request_success_total{engine="0",finished_reason="stop",model_name="llama"} 40.0
vllm:request_success_total{engine="0",finished_reason="abort",model_name="llama"} 2.0
vllm:request_success_total{engine="1",finished_reason="abort",model_name="llama"} 3.0
vllm:request_success_total{engine="1",finished_reason="length",model_name="llama"} 9.0
"""


def test_vllm_multi_engine_sums_counters_and_queues_maxes_fractions() -> None:
    s = normalise_vllm(parse_exposition(MULTI_ENGINE))
    assert s.model == "llama"
    assert s.running == 8.0
    assert s.waiting == 9.0
    assert s.kv_usage == 0.6  # max, never 0.9
    assert s.generation_tokens == 3500.0  # _created series not counted
    assert s.errors == 5.0  # only finished_reason="abort"


def test_nan_and_inf_are_ignored() -> None:
    text = """# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.3
vllm:kv_cache_usage_perc{engine="1",model_name="m"} NaN
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 4
vllm:num_requests_waiting{engine="1",model_name="m"} +Inf
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} -Inf
"""
    s = normalise_vllm(parse_exposition(text))
    assert s.kv_usage == 0.3
    assert s.waiting == 4.0
    assert s.running == 0.0


def test_tgi_fixture() -> None:
    # File: tgi_queue_size 0, tgi_batch_current_size 0, tgi_batch_current_max_tokens 0,
    # tgi_request_generated_tokens_sum 3423, tgi_request_failure{err="validation"} 2, no
    # tgi_batch_max_total_tokens (so no KV fraction), decode 1509 + prefill 16 forward passes.
    exp = parse_exposition(load("tgi-3.x-datadog-fixture.prom"))
    s = normalise_tgi(exp)
    assert s.model is None
    assert (s.running, s.waiting) == (0.0, 0.0)
    assert s.kv_usage is None
    assert s.generation_tokens == 3423.0
    assert s.errors == 2.0  # counter without _total on the wire
    assert s.progress == 3423.0 + 1509.0 + 16.0


def test_tgi_kv_fraction_from_batch_tokens() -> None:
    text = """# TYPE tgi_batch_current_max_tokens gauge
tgi_batch_current_max_tokens 3000
# TYPE tgi_batch_max_total_tokens gauge
tgi_batch_max_total_tokens 12000
# TYPE tgi_queue_size gauge
tgi_queue_size 4
"""
    s = normalise_tgi(parse_exposition(text))
    assert s.kv_usage == 0.25
    assert s.waiting == 4.0


def test_sglang_0510_fixture() -> None:
    s = normalise_sglang(parse_exposition(load("sglang-0.5.10-datadog-fixture.prom")))
    assert s.model == "facebook/opt-125m"
    assert (s.running, s.waiting) == (0.0, 0.0)
    assert s.kv_usage == 0.25
    assert s.generation_tokens == 32.0


def test_sglang_docs_fixture_under_load() -> None:
    s = engine("sglang", "sglang-docs-production-metrics-example.prom")
    assert s.model == "meta-llama/Llama-3.1-8B-Instruct"
    assert s.running == 162.0
    assert s.waiting == 2826.0
    assert s.kv_usage == 0.28
    assert s.generation_tokens == 7.557572e06


def test_triton_trtllm_fixture() -> None:
    exp = parse_exposition(load("triton-trtllm-backend-readme-example.prom"))
    s = normalise_triton(exp)
    assert s.model == "tensorrt_llm"
    assert s.waiting == 1.0  # request_type="waiting"
    assert s.running == 1.0  # request_type="scheduled"
    assert s.kv_usage == 0.4875  # kv_cache_block_type="fraction"
    assert s.generation_tokens is None


def test_triton_238_fixture_with_model_hint() -> None:
    exp = parse_exposition(load("triton-2.38-datadog-fixture.prom"))
    s = normalise_triton(exp, "densenet_onnx")
    assert s.model == "densenet_onnx"
    assert s.waiting == 0.0
    assert s.progress == 3.0  # nv_inference_exec_count{model="densenet_onnx"}
    assert s.errors == 0.0
    unhinted = normalise_triton(exp)
    assert unhinted.model == "densenet_onnx"  # most successful requests (3)


def test_triton_queue_summary_fixture() -> None:
    s = engine("triton", "triton-docs-queue-summary-example.prom")
    assert s.model == "my_model"
    assert s.progress == 161.0  # nv_inference_request_success


def test_dcgm_mixed_fixture() -> None:
    g = gpu("dcgm-exporter-mixed-t4-a10g-datadog-fixture.prom")
    assert g.count == 3  # GPU-20c56d28…, GPU-9ef1b6d0…, GPU-abc
    assert g.utilization == 0.0
    assert g.memory_used_mib == 0.0
    # GPU-20c56d28: used 0 + free 15109; GPU-9ef1b6d0: FB_TOTAL 15109
    assert g.memory_total_mib == 30218.0
    assert g.degraded == 0
    assert g.xids == ()


def test_dcgm_blank_sentinel_is_ignored() -> None:
    exp = parse_exposition(load("dcgm-exporter-readme-quickstart-example.prom"))
    assert not exp.has("DCGM_FI_DEV_MEMORY_TEMP")  # 9223372036854775794 in the file
    assert exp.total("DCGM_FI_DEV_SM_CLOCK") == 139.0
    assert exp.total("DCGM_FI_DEV_MEM_CLOCK") == 405.0
    assert normalise_dcgm(exp).count == 1


def test_dcgm_h100_fixture() -> None:
    g = gpu("dcgm-exporter-h100-digitalocean-docs-excerpt.prom")
    assert g.count == 1
    assert g.degraded == 0


def _dcgm_line(name: str, value: str, gpu_index: int = 0, extra: str = "") -> str:
    return f'# TYPE {name} gauge\n{name}{{gpu="{gpu_index}",UUID="GPU-{gpu_index}",Hostname="h"{extra}}} {value}\n'


def test_critical_xid_marks_gpu_degraded() -> None:
    text = (
        "# TYPE DCGM_FI_DEV_GPU_UTIL gauge\n"
        'DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-0"} 80\n'
        'DCGM_FI_DEV_GPU_UTIL{gpu="1",UUID="GPU-1"} 40\n'
        "# TYPE DCGM_FI_DEV_XID_ERRORS gauge\n"
        'DCGM_FI_DEV_XID_ERRORS{gpu="0",UUID="GPU-0"} 79\n'
        'DCGM_FI_DEV_XID_ERRORS{gpu="1",UUID="GPU-1"} 13\n'
    )
    g = normalise_dcgm(parse_exposition(text))
    assert g.count == 2
    assert g.utilization == pytest.approx(0.6)
    assert g.degraded == 1  # XID 13 is workload-caused, not critical
    assert g.xids == (79,)
    assert 79 in CRITICAL_XIDS and 13 not in CRITICAL_XIDS


def test_row_remap_failure_and_health_watch_mark_degraded() -> None:
    text = _dcgm_line("DCGM_FI_DEV_ROW_REMAP_FAILURE", "1", 0) + _dcgm_line(
        "DCGM_EXP_GPU_HEALTH_STATUS", "20", 1, ',health_watch="MEM",health_error_code="1"'
    )
    g = normalise_dcgm(parse_exposition(text))
    assert g.degraded == 2
    assert any("row remap" in r for r in g.reasons)
    assert any("MEM" in r for r in g.reasons)


def test_malformed_exposition_raises_scrape_error() -> None:
    with pytest.raises(ScrapeError):
        parse_exposition('vllm:num_requests_waiting{model_name="m" 1\n')


def test_unknown_kind_raises() -> None:
    with pytest.raises(ScrapeError):
        normalise("nope", parse_exposition(""))


def test_sim_samples_are_verbatim_copies() -> None:
    for path in SIM_SAMPLES.glob("*.prom"):
        assert path.read_bytes() == (FIXTURES / path.name).read_bytes(), path.name


# -- spare capacity -------------------------------------------------------------------------


def test_replica_load_uses_gie_thresholds() -> None:
    assert replica_load(0.3, 0.0) == 0.3
    assert replica_load(0.3, 2.5) == 0.5  # waiting 2.5 of 5
    assert replica_load(None, 10.0) == 1.0  # capped
    assert replica_load(1.4, 0.0) == 1.0


def test_source_spare() -> None:
    assert source_spare(3, 0.5, 0.0) == pytest.approx(1.5)
    assert source_spare(2, 0.1, 10.0) == pytest.approx(2 * (1 - 1.0))  # 5 queued per replica
    assert source_spare(0, 0.0, 0.0) == 0.0
