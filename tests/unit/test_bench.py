"""Fast tests of the benchmark helpers: statistics, ratios, missing entries, reports, charts.

No QEMU or container is started here; one test boots the tiny hello guest once.
"""

import json
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import benchlib as bl  # noqa: E402
import containers  # noqa: E402


def test_summarize_odd_and_even():
    s = bl.summarize([3.0, 1.0, 2.0])
    assert s == {"n": 3, "min": 1.0, "median": 2.0, "max": 3.0, "mean": 2.0}
    s = bl.summarize([4, 1, 3, 2])
    assert s["median"] == 2.5 and s["min"] == 1 and s["max"] == 4 and s["n"] == 4


def test_summarize_empty_is_an_error():
    with pytest.raises(ValueError):
        bl.summarize([])


def test_ratio_of_summaries_numbers_and_missing():
    a, b = bl.summarize([10, 20, 30]), bl.summarize([5, 10, 15])
    assert bl.ratio(a, b) == 2.0
    assert bl.ratio(a, b, key="min") == 2.0
    assert bl.ratio(3.0, 4.0) == 0.75
    assert bl.ratio(a, bl.missing("absent")) is None
    assert bl.ratio(bl.missing("absent"), b) is None
    assert bl.ratio(a, None) is None
    assert bl.ratio(1.0, 0) is None


def test_missing_entry_is_a_reason_not_a_number():
    m = bl.missing("crun not installed\n(apt-get install crun)")
    assert bl.is_missing(m)
    assert m == {"missing": "crun not installed (apt-get install crun)"}
    assert not any(isinstance(v, (int, float)) for v in m.values())
    assert bl.fmt_entry(m) == "missing: crun not installed (apt-get install crun)"
    assert bl.missing("")["missing"]          # never an empty reason


def test_alternate_interleaves_and_turns_failures_into_missing():
    order = []

    def ok(name, val):
        def f():
            order.append(name)
            return val
        return f

    def boom():
        order.append("bad")
        raise RuntimeError("runc exited 1: no such file")

    res = bl.alternate({"a": ok("a", 1.0), "bad": boom, "b": ok("b", 2.0)}, runs=3, warmup=1)
    assert res["a"]["n"] == 3 and res["a"]["median"] == 1.0
    assert res["b"]["median"] == 2.0
    assert res["bad"] == {"missing": "RuntimeError: runc exited 1: no such file"}
    # alternating: a, b, a, b ... (the failed runner dropped after its first failure)
    assert order == ["a", "bad", "b"] + ["a", "b"] * 3


def test_report_lines_ratio_and_missing():
    rows = {"kvmvm": bl.summarize([100, 110, 120]), "qemu": bl.summarize([200, 220, 240]),
            "podman": bl.missing("podman not installed")}
    text = "\n".join(bl.report_lines("t", rows, baseline="kvmvm"))
    assert "x2.00 of kvmvm" in text
    assert "podman" in text and "missing: podman not installed" in text
    assert "x" not in text.split("podman", 1)[1]  # no ratio for a missing row


def test_run_timed_measures_and_reports_failure():
    dt, p = bl.run_timed([sys.executable, "-c", "pass"])
    assert dt > 0 and p.returncode == 0
    with pytest.raises(RuntimeError, match="exited 3"):
        bl.run_timed([sys.executable, "-c", "import sys; sys.stderr.write('nope'); sys.exit(3)"])


def test_absent_runtime_becomes_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(containers.shutil, "which", lambda name: None)
    rts = containers.runtimes(str(tmp_path), ["crun", "bwrap"])
    for name in ("crun", "bwrap"):
        assert bl.is_missing(rts[name])
        assert "not installed" in rts[name]["missing"]
        assert "apt-get install" in rts[name]["missing"]


def test_startup_reports_missing_runtime_without_number(tmp_path, monkeypatch):
    import startup

    monkeypatch.setattr(containers.shutil, "which", lambda name: None)
    monkeypatch.setattr(bl, "qemu_bin", lambda: None)
    # kvmvm itself runs (one real boot of the tiny hello guest): the ratio is None because
    # QEMU is missing, not because kvmvm was left out
    r = startup.measure(1, only=["kvmvm", "qemu", "runc"], work=str(tmp_path))
    assert r["results"]["kvmvm"]["n"] == 1 and r["results"]["kvmvm"]["median"] > 0
    assert r["results"]["qemu"]["missing"].startswith("qemu-system-x86_64 not installed")
    assert r["results"]["runc"]["missing"].startswith("runc not installed")
    assert r["ratio_kvmvm_qemu_median"] is None
    assert r["ratio_to_kvmvm_median"] == {"qemu": None, "runc": None}
    json.dumps(r)  # serializable


def test_guest_ram_mapping_rss(tmp_path, monkeypatch):
    import memory

    smaps = (
        "7f0000000000-7f0008000000 rw-p 00000000 00:00 0 \n"
        "Size:             131072 kB\nRss:                  52 kB\n"
        "7f1000000000-7f1000400000 rw-p 00000000 00:00 0 \n"
        "Size:               4096 kB\nRss:                4000 kB\n"
        "7f2000000000-7f2008000000 r--p 00000000 08:01 123 /usr/lib/big.so\n"
        "Size:             131072 kB\nRss:                 900 kB\n")
    f = tmp_path / "smaps"
    f.write_text(smaps)
    real_open = open
    monkeypatch.setattr("builtins.open", lambda p, *a, **k: real_open(f if str(p).endswith("/smaps") else p, *a, **k))
    assert memory.guest_ram_rss_kib(1, 128) == 52


def test_charts_and_summary_with_missing(tmp_path):
    import matplotlib  # noqa: F401  (the test extra installs it: a missing one fails, never skips)
    from kvmvm.cli import bench

    st = {"kvmvm": bl.summarize([300, 310, 320]), "qemu": bl.summarize([100, 110, 120]),
          "crun": bl.missing("crun not installed (apt-get install crun)")}
    results = {"benchmarks": {
        "startup": {"results": st, "ratio_kvmvm_qemu_median": bl.ratio(st["kvmvm"], st["qemu"])},
        "memory": {"results": {"kvmvm": {"rss_mib": 20, "pss_mib": 14, "guest_touched_mib": 0.05,
                                         "overhead_rss_mib": 19.9, "overhead_pss_mib": 14},
                               "runc": {"rss_mib": 11, "pss_mib": 10, "processes": ["runc:1"]}}},
        "density": {"cap": 50, "results": {"kvmvm-api": {"vms": 50, "vms_per_s": 40.0, "stopped_by": "cap"},
                                           "qemu": bl.missing("qemu-system-x86_64 not installed")}},
        "exits": bl.missing("benchmark exits.py timed out after 90 s"),
    }}
    files, why = bench.draw_charts(results, tmp_path)
    assert why is None
    names = sorted(os.path.basename(f) for f in files)
    assert names == ["density.png", "density_rate.png", "memory.png", "startup.png"]
    for f in files:
        assert open(f, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    text = "\n".join(bench.summary_lines(results))
    assert "crun            missing: crun not installed" in text
    assert "missing: benchmark exits.py timed out" in text
    assert "qemu        missing: qemu-system-x86_64 not installed" in text


def test_bench_command_rejects_unknown_benchmark(tmp_path):
    from kvmvm.cli import main

    assert main(["bench", "--only", "nosuch", "--out", str(tmp_path)]) == 2


def test_html_report_embeds_table_provenance_and_charts(tmp_path):
    import matplotlib  # noqa: F401
    from kvmvm.cli import bench

    st = {"kvmvm": bl.summarize([30, 31, 32]), "qemu": bl.summarize([40, 41, 42])}
    results = {"kvmvm_command": "kvmvm bench --html", "commit": "abc123", "started": "now",
               "duration_s": 1.0, "host": {"cpu": "Test CPU", "cpus": 2, "loadavg": ["0.1", "0.2", "0.3"]},
               "benchmarks": {"startup": {"results": st, "ratio_kvmvm_qemu_median": bl.ratio(st["kvmvm"], st["qemu"])}}}
    files, why = bench.draw_charts(results, tmp_path)
    assert why is None
    results["charts"] = [os.path.basename(f) for f in files]
    page = bench.html_report(results, tmp_path)
    assert "abc123" in page and "Test CPU" in page and "kvmvm bench --html" in page
    assert "<td>kvmvm</td>" in page and "0.75" in page           # the table with its ratio
    assert page.count("data:image/png;base64,") == len(files) == 1


def test_source_commit_names_a_commit(tmp_path):
    from kvmvm.cli import bench

    c = bench.source_commit(bl.REPO / "benchmarks")
    assert len(c.split("-")[0]) == 40
    assert bench.source_commit(tmp_path).startswith("unknown")


def test_markdown_report_states_command_commit_and_environment():
    from kvmvm.cli import bench

    st = {"kvmvm": bl.summarize([30, 31, 32]), "qemu": bl.missing("qemu-system-x86_64 not installed")}
    results = {"kvmvm_command": "kvmvm bench --quick", "commit": "deadbeef", "started": "t", "duration_s": 2,
               "host": {"os": "Debian GNU/Linux 12", "kernel": "6.1", "cpus": 2, "cpu": "X", "kvm": "pvm",
                        "loadavg": ["1.0", "1.0", "1.0"]},
               "benchmarks": {"startup": {"results": st, "ratio_kvmvm_qemu_median": None}}}
    md = bench.markdown_report(results)
    assert "`kvmvm bench --quick`" in md and "`deadbeef`" in md
    assert "Debian GNU/Linux 12, kernel 6.1, 2 CPUs (X)" in md and "/dev/kvm: pvm" in md
    assert "missing: qemu-system-x86_64 not installed" in md
    assert "/work/" not in md and "/root/" not in md


def test_results_name_no_machine_paths(tmp_path):
    import os
    import tempfile
    from pathlib import Path

    from kvmvm.cli import bench

    repo = Path(bl.REPO)
    r = {"command": f"{repo}/.venv/bin/python {repo}/benchmarks/startup.py --json",
         "kvmvm": f"{os.path.expanduser('~')}/.cache/kvmvm/x", "tmp": f"{tempfile.gettempdir()}/kvmvm-bench-abc/rootfs"}
    out = bench.scrub_paths(r, repo)
    assert out["command"] == ".venv/bin/python benchmarks/startup.py --json"
    assert out["kvmvm"] == "~/.cache/kvmvm/x"
    assert out["tmp"] == "$TMP/.../rootfs"


def test_startup_pairs_alternates_and_reads_json_timings(capsys, tmp_path):
    """startup_pairs.py: every command runs --runs times (after a warm-up round), and the
    timings_ms of a `kvmvm boot --json`-like last line are summarised."""
    import startup_pairs

    count = tmp_path / "count"
    script = (f"echo x >> {count}; echo hello; "
              "echo '{\"outcome\": \"ok\", \"timings_ms\": {\"first_kvm_run\": 3.5, \"end\": null}}'")
    assert startup_pairs.main(["--runs", "3", "--json", f"a=sh -c {json.dumps(script)}", "b=true"]) == 0
    out = json.loads(capsys.readouterr().out)
    a, b = out["results"]["a"], out["results"]["b"]
    assert count.read_text().count("x") == 4     # 3 runs + the warm-up
    assert a["wall_ms"]["n"] == 3 and b["cpu_ms"]["n"] == 3 and b["timings_ms"] == {}
    assert a["timings_ms"] == {"first_kvm_run": {"median": 3.5, "min": 3.5, "n": 3}}
    with pytest.raises(SystemExit):
        startup_pairs.main(["no-equals-sign"])


def test_podman_default_storage_follows_storage_conf(tmp_path):
    assert containers.podman_default_storage(0, {}, confs=[str(tmp_path / "absent.conf")]) == \
        ("/var/lib/containers/storage", "/run/containers/storage")
    conf = tmp_path / "storage.conf"
    conf.write_text('[storage]\ndriver = "overlay"\ngraphroot = "/srv/graph"\nrunroot = "/srv/run"\n'
                    'rootless_storage_path = "/srv/user"\n')
    assert containers.podman_default_storage(0, {}, confs=[str(tmp_path / "absent.conf"), str(conf)]) == \
        ("/srv/graph", "/srv/run")
    # CONTAINERS_STORAGE_CONF comes first; rootless: rootless_storage_path, runroot under XDG_RUNTIME_DIR
    env = {"CONTAINERS_STORAGE_CONF": str(conf), "HOME": "/home/u", "XDG_RUNTIME_DIR": "/run/user/7"}
    assert containers.podman_default_storage(7, env, confs=[]) == ("/srv/user", "/run/user/7/containers")
    assert containers.podman_default_storage(7, {"HOME": "/home/u"}, confs=[]) == \
        ("/home/u/.local/share/containers/storage", "/run/user/7/containers")


def test_writable_walks_to_the_nearest_existing_directory(tmp_path):
    assert containers.writable(str(tmp_path / "a" / "b" / "c"))
    f = tmp_path / "file"
    f.write_text("x")
    assert not containers.writable(str(f / "sub"))     # below a file nothing can be created


def test_podman_storage_flags_only_when_default_storage_is_not_writable(tmp_path):
    work = "/w"     # short: the runroot stays below it (nothing is created)
    assert containers.podman_storage_flags(work, ("/g", "/r"), is_writable=lambda p: True) == []
    flags = containers.podman_storage_flags(work, ("/g", "/r"), is_writable=lambda p: p != "/g")
    assert flags[:4] == ["--root", f"{work}/podman/root", "--runroot", f"{work}/podman/runroot"]
    assert containers.podman_storage_flags(work, ("/g", "/r"), is_writable=lambda p: p != "/r")[:4] == flags[:4]
    # podman refuses a runroot longer than 50 characters: then a short one of its own in /tmp
    deep = str(tmp_path / ("d" * 60))
    flags = containers.podman_storage_flags(deep, ("/g", "/r"), is_writable=lambda p: False)
    runroot = flags[flags.index("--runroot") + 1]
    try:
        assert flags[1] == f"{deep}/podman/root" and len(runroot) <= 50 and os.path.isdir(runroot)
    finally:
        os.rmdir(runroot)


def test_overlay_available_reads_proc_filesystems(tmp_path):
    fs = tmp_path / "filesystems"
    fs.write_text("nodev\tsysfs\nnodev\tcgroup2\n\text4\n")
    assert not containers.overlay_available(str(fs))
    fs.write_text("nodev\tsysfs\nnodev\toverlay\n")
    assert containers.overlay_available(str(fs))
    assert not containers.overlay_available(str(tmp_path / "absent"))


def test_cgroup_problem_names_the_missing_mount(tmp_path):
    why = containers.cgroup_problem(str(tmp_path))
    assert why and "mount -t cgroup2" in why
    assert "no cgroup file system" in containers.cgroup_problem(str(tmp_path / "absent"))
    (tmp_path / "cgroup.controllers").write_text("cpu memory\n")
    assert containers.cgroup_problem(str(tmp_path)) is None


def test_podman_commands_carry_the_private_storage_flags(tmp_path):
    r = containers.Runtime("podman", str(tmp_path))
    r.podman_flags = ["--root", "/w/root", "--runroot", "/w/run"]
    r.image = "sha256abc"
    run = r.cmd(["true"])
    assert run[:5] == ["podman", "--root", "/w/root", "--runroot", "/w/run"]
    assert run[5] == "run" and run[-2:] == ["sha256abc", "true"] and "--rm" in run
    cid = r.ids[-1]
    assert "--rm" in r.cmd(["sleep", "9"], detach=True) and "-d" in r.cmd(["sleep", "9"], detach=True)
    assert r.exec_cmd(cid, ["true"]) == ["podman", "--root", "/w/root", "--runroot", "/w/run", "exec", cid, "true"]
