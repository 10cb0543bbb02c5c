"""Text of an emulation report (edgegen emulate) and of a self-test (edgegen verify)."""

from __future__ import annotations

from typing import Any


def emulation(report: dict[str, Any]) -> str:
    """The report of `edgegen emulate` as lines of text."""
    c = report["constraints"]
    lines = [f"emulating {report['bundle']} on {report['target']} ({report['device']}, {report['arch']}, "
             f"{report['backend']} {report['precision']})",
             f"  constraints  {c['threads']} threads, memory ceiling {c['memory_mb']} MB (address-space limit on the "
             "process)" + (f"; {c['accelerator_replaced_by_cpu']} absent: its CPU path runs"
                           if c["accelerator_replaced_by_cpu"] else "")]
    if c.get("runtime_replaced"):
        lines.append(f"  runtime      {c['runtime_replaced']}")
    e = report["estimate"]
    compiled = e.get("edgetpu_compiler")  # the compiler's counts, where the build recorded them, say what maps
    if compiled:
        lines.append(f"  op support   {compiled['summary']}")
    elif "op_support" in report:
        lines.append(f"  op support   {report['op_support']['summary']}")
    lines.append(f"  this host    {_run(report['host'])}")
    arm = report.get("aarch64")
    if arm and "skipped" in arm:
        lines.append(f"  aarch64      skipped: {arm['skipped']}")
    elif arm:
        line = _run(arm)
        if "slowdown_vs_host" in arm:
            line += f"; {arm['slowdown_vs_host']:g}x this host's time (QEMU: proves it runs, not how fast)"
        lines.append(f"  aarch64      {line}")
        lines.append(f"  userland     {arm['userland']} (built in {arm['userland_build_s']} s; "
                     + ", ".join(f"{k} {v}" for k, v in (arm.get("packages") or {}).items()) + ")")
    rtl = report.get("rtl")
    if rtl:
        if "skipped" in rtl:
            lines.append(f"  RTL tier     skipped: {rtl['skipped']}")
        elif rtl.get("ok"):
            lines.append(f"  RTL tier     {rtl['cycles']} cycles{_at_fmax(rtl.get('execution') or {})}; "
                         f"simulated in {rtl['latency_ms']['p50']:.0f} ms")
    batch = e.get("batch", 1)
    uncounted = compiled["uncounted"] if compiled else e.get("uncounted")
    per_batch = f" (a batch of {batch} in {e['batch_latency_ms']:.3g} ms)" if batch != 1 else ""
    lines.append(f"  estimate     {e['latency_ms']:.3g} ms per image{per_batch} on the device: ESTIMATE from the "
                 f"roofline ({e['bound']}-bound; {e['ops'] / 1e6:.3g} Mops at {e['peak_gops']:g} GOPS, "
                 f"{e['bytes'] / 1e6:.2f} MB at {e['bandwidth_gbs']:g} GB/s{' for the batch' * (batch != 1)}), "
                 "a lower bound"
                 + (f"; {uncounted}" if uncounted else ""))
    for check in report["checks"]:
        lines.append(f"  {'PASS' if check['pass'] else 'FAIL'}  {check['name']}: {check['detail']}")
    lines.append(f"result: {'PASS' if report['pass'] else 'FAIL'}")
    return "\n".join(lines)


def _at_fmax(execution: dict[str, Any]) -> str:
    """The RTL run's latency and the clock it is at (the FPGA session's `latency_clock`), or nothing: first at the
    board's NPU clock where the bitstream meets it (the clock the device runs at), its Fmax beside."""
    if not execution.get("latency_ms_at_fmax"):
        return ""
    fmax = f"the bitstream's Fmax {execution['fmax_mhz']:g} MHz"
    board = execution.get("board_clock_mhz")
    if execution.get("latency_ms_at_board_clock"):
        return (f", {execution['latency_ms_at_board_clock']} ms at the board's {board:g} MHz NPU clock, which the "
                f"bitstream meets ({execution['latency_ms_at_fmax']} ms at {fmax}, its headroom)")
    at = f", {execution['latency_ms_at_fmax']} ms at "
    if execution.get("fmax_source") != "bitstream":
        return at + f"the target's fmax_mhz {execution['fmax_mhz']:g} MHz (no bitstream built: timing not checked)"
    return at + fmax + (f" (it fails timing at the board's {board:g} MHz NPU clock: no latency quoted there)" if
                        board and not execution.get("timing_met") else "")


LINE_KEEPS = 480  # characters of an error's last line a report line keeps whole


def last_line(message: str, keep: int = LINE_KEEPS) -> str:
    """The last non-empty line of a (multi-line) error message; one longer than `keep` characters loses its middle,
    not its end: the cause's start (what failed) and its end (the hint that explains it, the fix) both stay."""
    lines = [line.strip() for line in str(message).strip().splitlines() if line.strip()]
    if not lines:
        return "no message"
    line = lines[-1]
    if len(line) <= keep:
        return line
    head, tail = line[:keep // 3], line[-(keep - keep // 3):]
    head = head.rsplit(" ", 1)[0] if " " in head else head  # whole words either side of the cut
    tail = tail.split(" ", 1)[1] if " " in tail else tail
    return f"{head} [...] {tail}"


def _run(run: dict[str, Any]) -> str:
    if not run.get("ok"):
        return f"failed: {last_line(run.get('message', ''))}"
    t = run["latency_ms"]
    return (f"{run['runtime']} on {run['machine']}: p50 {t['p50']:.3g} ms (min {t['min']:.3g}, {t['runs']} runs), "
            f"peak RSS {run['peak_rss_mb']:.0f} MB")


def self_test(result: dict[str, Any]) -> str:
    """The report of `edgegen verify` as lines of text."""
    lines = [f"verifying {result['bundle']} (target {result['target']}, {result['backend']} {result['precision']}) "
             f"with {result['runtime']} on {result['machine']}"]
    for name, r in result["self_test"]["outputs"].items():
        ssim = f", SSIM {r['ssim']:.4f}" if "ssim" in r else ""
        lines.append(f"  {'PASS' if r['pass'] else 'FAIL'}  {name}: PSNR {r['psnr_db']:.2f} dB, max-abs "
                     f"{r['max_abs']:.4g}{ssim} ({tolerance(r['tolerance'])})")
    lines.append(f"  latency p50 {result['latency_ms']['p50']:.3g} ms ({result['latency_ms']['runs']} runs, "
                 f"{result['threads']} threads)")
    lines.append(f"result: {'PASS' if result['self_test']['pass'] else 'FAIL'}")
    return "\n".join(lines)


def tolerance(wanted: dict[str, float]) -> str:
    """One output's self-test criteria as text; an output a bundle records none for is said to be unchecked."""
    if not wanted:
        return "unchecked: the bundle records no criterion for this output; rebuild it with this edgegen"
    return "tolerance " + ", ".join(f"{k} {v}" for k, v in wanted.items())


def summary_rows(rows: list[str]) -> list[str]:
    """The pytest plugin's end-of-run table: the header, one row per emulated bundle (summary_row), the legend."""
    return [f"{'target':<24} {'result':<6} {'host p50 ms':>11} {'aarch64 p50 ms':>14} {'estimate ms':>11} "
            f"{'min PSNR dB':>11} {'arm64 max-abs':>11} {'peak RSS MB':>11}  bundle", *rows,
            "estimate: roofline of the target's cited peaks (a lower bound, not a measurement); aarch64 p50: "
            "under QEMU on this host; arm64 max-abs: vs x86; peak RSS: this host's run under the ceiling (- where "
            "that run failed: the memory check's detail says what the bundle needs)"]


def summary_row(record: dict[str, Any]) -> str:
    """One emulated bundle's row of that table: {target, bundle, and report, or why it was skipped or failed}."""
    if "skipped" in record or "failed" in record:
        return (f"{record['target']:<24} {'SKIP' if 'skipped' in record else 'FAIL':<6} "
                f"{record.get('skipped') or record['failed']}")
    r = record["report"]
    host, arm = r["host"], r.get("aarch64") or {}
    # the images' PSNR (the build's fidelity): not a score's beside them, held to its own criterion
    psnr = [o["psnr_db"] for o in (host.get("self_test") or {}).get("outputs", {}).values() if o["quality"]]
    match = f"{arm['match']['max_abs']:.1g}" if "match" in arm else "-"
    fidelity = f"{min(psnr):.2f}" if psnr else "-"
    # a run that failed (under the memory ceiling, say) stopped before the bundle was loaded: its RSS is not the
    # bundle's, so none is printed
    rss = f"{host['peak_rss_mb']:.0f}" if host.get("ok") and host.get("peak_rss_mb") is not None else "-"
    return (f"{r['target']:<24} {'PASS' if r['pass'] else 'FAIL':<6} {_ms(host):>11} {_ms(arm):>14} "
            f"{r['estimate']['latency_ms']:>11.3g} {fidelity:>11} {match:>11} {rss:>11}  {record['bundle']}")


def _ms(run: dict[str, Any]) -> str:
    return f"{run['latency_ms']['p50']:.3g}" if run.get("ok") else "-"
