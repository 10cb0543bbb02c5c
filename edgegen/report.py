"""The printed form of a build's report (the same facts the manifest holds)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .backends.openvino.session import INFERENCE_PRECISION  # the plugin's names: the keys of execution.float_types
from .bench import busy_host
from .passes.prune import CHANNEL_MULTIPLE
from .runtime.roi import WHOLE_FRAME_SHARE

SLOWER = 0.9  # a reduced-precision artifact under this speed against the fp32 source gets a warning (noise: ~10%)
UNSTEADY = 1.25  # the two speed estimates disagreeing by more than this mark the measurement unsteady
BACKEND_GAP_DB = 6.0  # an int8 artifact this far below its QDQ graph (run in ONNX Runtime) gets a warning
# the artifact's own MACs or parameter bytes (session.artifact) this far from the compiled graph's are said on the
# cost line (where no rewrite changes a layer, a LiteRT fp32 or fp16 artifact's sit within 4% of the graph's)
ARTIFACT_GAP = 0.05


def _speed_note(lat: dict[str, Any], dest: Path, warned: bool) -> str:
    """The latency line's comparison with the fp32 source: the paired-block speed, or both estimates where
    they disagree (load changed during the measurement), and the load of other processes where it was
    enough to distort it (`warned`: a warning line below says so already)."""
    if "speed_vs_source" not in lat:
        return ""
    source = f"the fp32 source in ONNX Runtime ({lat['source_p50_ms']:.3f} ms"
    if _unsteady(lat):
        return (f"; against {source}) unsteady on this host: {lat['speed_vs_source']:.2f}x by paired blocks, "
                f"{lat['source_p50_ms'] / lat['p50_ms']:.2f}x by medians")
    busy = f"; other processes kept {lat['other_load_cores']:.1f} of {lat.get('host_cpus', '?')} cores busy: " \
        f"rerun `edgegen bench {dest} --baseline` on a quiet host for a figure to compare" \
        if busy_host(lat, lat["threads"]) and not warned else ""
    return f"; {lat['speed_vs_source']:.2f}x the speed of {source}, in alternating blocks{busy})"


def _unsteady(lat: dict[str, Any]) -> bool:
    """Whether the median of the paired blocks' ratios and the ratio of the medians differ by more than
    UNSTEADY: the host's load changed during the measurement, and neither figure can be trusted."""
    if "speed_vs_source" not in lat or not lat["p50_ms"] or not lat["speed_vs_source"]:
        return False
    return abs(math.log(lat["source_p50_ms"] / lat["p50_ms"] / lat["speed_vs_source"])) > math.log(UNSTEADY)


def _artifact_note(manifest: dict[str, Any]) -> str:
    """The cost line's MACs and parameter bytes of the artifact itself, where the backend measured them
    (session.artifact: a LiteRT build's sub-pixel CONV_2D computes 2.2x a DCGAN graph's MACs), where its MACs
    are more than ARTIFACT_GAP from the compiled graph's (model.macs)."""
    own, model = manifest.get("session", {}).get("artifact"), manifest["model"]
    # the MACs decide: an int8 graph's parameter bytes count the per-channel scales and zero points, which a
    # .tflite keeps in its tensors' quantization records, not in its buffers, so they differ on every build
    if not own or abs(own["macs"] - model["macs"]) <= ARTIFACT_GAP * max(own["macs"], model["macs"]):
        return ""
    return (f"; the {manifest['backend']} artifact computes {own['macs'] / 1e6:.2f} MMACs and stores "
            f"{own['param_bytes'] / 1e3:.0f} KB as lowered (the figures emulate's roofline uses)")


def backend_gap_db(manifest: dict[str, Any]) -> float:
    """How many dB an int8 artifact's fidelity lies below the QDQ graph it was lowered from, run in ONNX
    Runtime when the build chose it (0 for other precisions)."""
    quant = manifest.get("passes", {}).get("quantize")
    if not quant or manifest.get("precision") != "int8":
        return 0.0
    return quant["result"]["psnr_db"] - manifest["fidelity"]["psnr_db"]


def render_build_report(manifest: dict[str, Any], dest: Path) -> str:
    """A few lines per build: where, cost before/after, fidelity, what the passes did, latency."""
    model, fid, lat = manifest["model"], manifest["fidelity"], manifest["latency"]
    batch = model.get("cost_batch", 1)  # the costs' batch: an --input-shape may give one over 1
    lines = [
        f"{manifest['target']['name']}: {manifest['backend']} {manifest['precision']} -> {dest}",
        f"  cost      {model['source_macs'] / 1e6:.2f} -> {model['macs'] / 1e6:.2f} MMACs, parameters "
        f"{model['source_param_bytes'] / 1e3:.0f} -> {model['param_bytes'] / 1e3:.0f} KB"
        f"{f' (batch {batch})' if batch > 1 else ''}{_artifact_note(manifest)}",
        f"  fidelity  PSNR {fid['psnr_db']:.2f} dB, SSIM {fid['ssim']:.4f}, max-abs {fid['max_abs']:.3g} vs the "
        f"fp32 source on {fid['samples']} held-out inputs"
        + (f" ({fid['inputs_from']})" if fid.get("inputs_from") else
           " (smooth synthetic images: photographs can score lower)"
           if any(i.get("role") == "image" for i in model.get("inputs", [])) else "")
        + (f" (floor: {fid['floor']})" if fid.get("floor") else "")
        + (f"; PSNR {fid['fresh']['psnr_db']:.2f} dB, SSIM {fid['fresh']['ssim']:.4f} on "
           f"{fid['fresh']['samples']} fresh inputs no choice of the build saw" if fid.get("fresh") else ""),
        f"  latency   p50 {lat['p50_ms']:.3f} ms, batch {lat.get('batch', 1)}, {lat['threads']} thread(s), "
        f"on {fid['ran_on']}"
        + _speed_note(lat, dest, lat.get("speed_vs_source", 1.0) < SLOWER and manifest["precision"] != "fp32"),
    ]
    lines[3:3] = [f"  inputs    {i['name']!r}: the held-out inputs were drawn in [{i['range'][0]:g}, "
                  f"{i['range'][1]:g}], assumed ({i['range_assumed']}); give --input-range LO,HI if the model takes "
                  "other values (0..255 pixels)"
                  for i in model.get("inputs", []) if i.get("range_assumed") and i.get("range")]
    if lat.get("speed_vs_source", 1.0) < SLOWER and manifest["precision"] != "fp32":
        if _unsteady(lat):
            lines.append(f"  warning   the speed of this {manifest['precision']} artifact against the fp32 source "
                         f"changed while it was measured: rerun `edgegen bench {dest} --baseline` before choosing "
                         "another target or precision")
        elif busy_host(lat, lat["threads"]):
            lines.append(f"  warning   this {manifest['precision']} artifact ran at {lat['speed_vs_source']:.2f}x the "
                         f"speed of the fp32 source while other processes kept {lat['other_load_cores']:.1f} of "
                         f"{lat.get('host_cpus', '?')} cores busy, which can slow one runtime more than the other: "
                         f"rerun `edgegen bench {dest} --baseline` on a quiet host before choosing another target or "
                         "precision")
        else:
            lines.append(f"  warning   this {manifest['precision']} artifact runs at {lat['speed_vs_source']:.2f}x the "
                         f"speed of the fp32 source on this host: {manifest['backend']} gains nothing from "
                         f"{manifest['precision']} on this model here; try another target or precision")
    execution = manifest.get("execution")
    # verified on this host's CPU in place of the target's device: the layer precisions are the CPU's
    stand_in = "(on this host's CPU in place of the device) " if str(manifest.get("fidelity", {}).get(
        "ran_on", "")).startswith("build host fallback") else ""
    if execution and manifest["precision"] in ("fp16", "bf16") and execution.get("float_types"):
        lines.append(f"  executes  {stand_in}{manifest['precision']}: {manifest['backend']} runs the compute layers in "
                     + ", ".join(f"{k} x{v}" for k, v in sorted(execution["float_types"].items())))
        if INFERENCE_PRECISION[manifest["precision"]] not in execution["float_types"]:
            lines.append(f"  warning   no layer runs in {manifest['precision']} on this host ({manifest['backend']} "
                         f"chose {', '.join(sorted(execution['float_types']))}): the fidelity and latency above are not "
                         f"{manifest['precision']}'s; a device that runs it will differ")
    if execution and execution["int8"]:
        lines.append(f"  executes  {stand_in}int8: "
                     + ", ".join(f"{k} x{v}" for k, v in sorted(execution["int8"].items()))
                     + "; float: " + (", ".join(f"{k} x{v}" for k, v in sorted(execution["float"].items())) or "none"))
    batching = manifest.get("batching", {})
    if not batching.get("invariant", True):
        lines.append(f"  batching  per request: {manifest['backend']} gives an input outputs up to "
                     f"{batching['max_abs']:.3g} apart alone and in a batch, so requests are computed one at a time "
                     "(the same request, the same pixels, whatever the traffic)")
    threading = manifest.get("threading", {})
    if threading.get("invariant") is False:
        lines.append(f"  threads   {manifest['backend']} gives outputs up to {threading['max_abs']:.3g} apart at 1 "
                     f"thread and at the target's {manifest['target']['threads']}: a runtime at other threads keys its "
                     "results apart from the assets and disk caches, which hold the target's pixels")
    pruned = manifest.get("passes", {}).get("prune")
    if pruned:
        quality = pruned["quality"]
        refit = quality.get("with_reconstruction")
        allocation = pruned.get("allocation", {})
        how = f"{pruned['ratio']:.0%} of channels per group"
        if allocation.get("used"):
            how = f"the MACs of {how}, re-allocated by sensitivity (uniform: {allocation['uniform_psnr_db']:.2f} dB)"
        lines.append(f"  pruning   {how}, MACs {pruned['macs']['before'] / 1e6:.2f} -> "
                     f"{pruned['macs']['after'] / 1e6:.2f} M; PSNR without re-fit "
                     f"{quality['without_reconstruction']['psnr_db']:.2f} dB"
                     + (f", with least-squares re-fit {refit['psnr_db']:.2f} dB (fitted on "
                        f"{pruned['reconstruction']['calibration']['count']} samples"
                        + ("" if pruned["reconstruction"].get("kept", True) else "; lower: not kept") + ")"
                        if refit else "")
                     + f"; {sum(after < before for before, after in (g['channels'] for g in pruned['groups']))} of "
                     f"{len(pruned['groups'])} groups pruned, {len(pruned['excluded'])} excluded")
        search = pruned.get("search", {})
        compiled = search.get("compiled_macs")  # the count the --prune-to-macs budget held, after int8 lowerings
        if compiled:
            lines.append(f"            as compiled for int8 (the budget's count): MACs {compiled['before'] / 1e6:.2f}"
                         f" -> {compiled['after'] / 1e6:.2f} M")
        over = [t for t in search.get("tried", []) if "macs" in t and t["macs"] > search.get("target_macs", 0)]
        if over and (compiled or pruned["macs"])["after"] < 0.9 * search["target_macs"]:  # why it undershoots
            closest = min(over, key=lambda t: t["macs"])
            lines.append(f"            under the {search['target_macs'] / 1e6:.2f} M target: the closest above it, "
                         f"{closest['ratio']:.0%}, needs {closest['macs'] / 1e6:.2f} M (groups of "
                         f"{4 * CHANNEL_MULTIPLE}+ channels keep a multiple of {CHANNEL_MULTIPLE}, so the MACs fall "
                         "in steps)")
    quant = manifest.get("passes", {}).get("quantize")
    if quant:
        lines.append(f"  int8      calibration: {quant['calibration']['source']}, {quant['calibration']['count']} "
                     f"samples, {quant['method']}; all-int8 PSNR {quant['all_int8']['psnr_db']:.2f} dB")
        gap = backend_gap_db(manifest)
        if gap > BACKEND_GAP_DB:
            lines.append(f"  warning   the {manifest['backend']} artifact is {gap:.1f} dB below its own int8 graph run in "
                         f"ONNX Runtime ({quant['result']['psnr_db']:.2f} dB): {manifest['backend']}'s int8 execution "
                         "loses that on this model; another target, or fp16/bf16 here, keeps it")
        equalized = manifest["passes"].get("equalized")
        if equalized:
            scales = [k for row in equalized["layers"] for k in row["scale"]]
            lines.append(f"            centred and equalized before InstanceNormalization: {len(equalized['layers'])} "
                         f"convolution(s), scales {min(scales):.3f}-{max(scales):.3f}; the fp32 graph then "
                         f"{equalized['fp32']['psnr_db']:.1f} dB vs the source")
        for name, nodes in manifest["passes"].get("lowered", {}).items():
            lines.append(f"            lowered for int8 ({name}): " + ", ".join(n["node"] for n in nodes[:6])
                         + (f" and {len(nodes) - 6} more" if len(nodes) > 6 else ""))
        lines.append("            quantized ops: " + ", ".join(f"{k} x{v}" for k, v in quant["quantized_ops"].items()))
        if quant["float_ops"]:
            lines.append("            float ops: " + ", ".join(f"{k} x{v}" for k, v in quant["float_ops"].items()))
        if quant.get("float_by_design"):
            lines.append(f"            {quant['float_by_design']}")
        if quant["sensitivity"]:
            against = f" (searched against {quant['searched_against']}: the first mix lost the rest in this " \
                "target's own int8 execution)" if quant.get("searched_against") else ""
            kept = ", ".join(quant["kept_float"]) or "none"
            lines.append(f"            kept in float for the floor: {kept}{against}")
            lines.append("            layer sensitivity (PSNR with only this layer int8), most damaging first:")
            for row in sorted(quant["sensitivity"], key=lambda r: -r["nmse"])[:12]:
                lines.append(f"              {row['node'][:48]:<48} {row['op']:<22} {row['psnr_db_alone']:7.2f} dB")
    timing = manifest.get("session", {}).get("bitstream", {}).get("timing_warning")
    if timing:
        lines.append(f"  warning   {timing}")
    lines += _serving_lines(manifest)
    return "\n".join(lines)


def _serving_lines(manifest: dict[str, Any]) -> list[str]:
    """What the serving options gave: the split, each output's ROI program or why there is none,
    tiers, batch sizes and precomputed assets."""
    serving, checked = manifest.get("serving", {}), manifest.get("serving_report", {})
    lines = []
    split = serving.get("split")
    if split:
        lines.append(f"split: none, {split['none']}" if "none" in split else
                     f"split: trunk on {', '.join(split['trunk_inputs'])} cut at {', '.join(split['cut'][:3])}"
                     f"{' ...' if len(split['cut']) > 3 else ''}; the head holds {split['head_share']:.1%} of the "
                     f"MACs; max-abs {checked['split']['max_abs']:.3g} vs the whole artifact")
    for output, roi in serving.get("roi", {}).items():
        if "refused" in roi:
            lines.append(f"roi {output}: not offered, {roi['refused']}")
        else:
            check = checked["roi"][output]
            lines.append(f"roi {output}: {len(roi['program']['ops'])} local ops from "
                         f"{len(roi['program']['roots'])} root(s); {check['checked_rects']} regions checked, "
                         + ("bit-exact" if check["bit_exact"] else f"max-abs {check['max_abs']:.3g}")
                         + ("; every region needs the whole input (served as the frame, cropped)"
                            if check.get("needs_whole_input") else "")
                         + (f"; a region first computes {roi['pre_share']:.0%} of the MACs on the whole frame"
                            if roi.get("pre_share", 0) >= WHOLE_FRAME_SHARE else ""))
    for row in checked.get("tiers", {}).get("rows", []):
        lines.append(f"tier {row['tier']}: {row['output']}, {row['macs'] / 1e6:.2f} MMACs, p50 {row['p50_ms']:.3f} ms"
                     + (f", {row['psnr_vs_full_downscaled_db']:.2f} dB vs the full image downscaled"
                        if "psnr_vs_full_downscaled_db" in row else "")
                     + (f"; upscaled by {row['upscale']}: {row['psnr_upscaled_vs_full_db']:.2f} dB vs the full image"
                        if "psnr_upscaled_vs_full_db" in row else ""))
    if "batch_sizes" in checked:
        lines.append(f"batch sizes: {', '.join(map(str, checked['batch_sizes']['sizes']))}")
    if manifest.get("assets"):
        lines.append(f"assets: {manifest['assets']['count']} precomputed ({manifest['assets']['rendered_on']})")
    return [f"  {'serving' if i == 0 else '':<9} {line}" for i, line in enumerate(lines)]
