"""The VMM behind the API: the configuration PUT/PATCH requests build before the boot, and
the running Machine after it (`InstanceStart`), with Firecracker's states.

Requests reach it one at a time (the router holds `lock`). Nothing here waits on the guest:
the VM's end is watched by its own thread, which records the Result and sets `ended`.
`threading` is imported when a VM starts, not before: the API's first answer does not wait
for it, and the main thread, which waits on `ended` with signal handlers set, imports nothing
while the API answers (a signal that lands inside an import can be lost).
"""

from __future__ import annotations

import _thread
import os
import time

from kvmvm.api.errors import NOT_AFTER_BOOT, NOT_BEFORE_BOOT, ApiError, unsupported

NOT_STARTED, RUNNING, PAUSED = "Not started", "Running", "Paused"

# Firecracker's default kernel command line when PUT /boot-source gives no boot_args
DEFAULT_BOOT_ARGS = "reboot=k panic=1 pci=off nomodule 8250.nr_uarts=0 i8042.noaux i8042.nomux i8042.dumbkbd"


def _bucket(tb: dict | None):
    """A TokenBucket of the API as the C core's struct (NULL: no limit)."""
    from kvmvm.bindings import ffi

    if not tb:
        return ffi.NULL
    b = ffi.new("struct kvmvm_token_bucket *")
    b.size, b.one_time_burst, b.refill_time_ms = tb["size"], tb.get("one_time_burst", 0), tb["refill_time"]
    return b


def default_machine_config() -> dict:
    return {"vcpu_count": 1, "mem_size_mib": 128, "smt": False, "track_dirty_pages": False,
            "huge_pages": "None"}


class Flag:
    """threading.Event's set / is_set / wait, on one `_thread` lock held until set."""

    def __init__(self):
        self._lock = _thread.allocate_lock()
        self._lock.acquire()
        self._set = False

    def set(self) -> None:
        if not self._set:
            self._set = True
            self._lock.release()

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float | None = None) -> bool:
        """True once set; False after `timeout` seconds. Signals interrupt it (POSIX)."""
        if self._set:
            return True
        if self._lock.acquire(True, -1 if timeout is None else timeout):
            self._lock.release()        # the next waiter passes too
            return True
        return self._set


class Vmm:
    """One microVM's configuration and life, as Firecracker's API sees it."""

    def __init__(self, instance_id: str = "anonymous-instance", t0_ns: int | None = None):
        from kvmvm.api.logs import Logger, Metrics

        self.id = instance_id
        self.t0_ns = t0_ns or time.monotonic_ns()
        self.lock = _thread.allocate_lock()       # what threading.Lock() gives
        self.state = NOT_STARTED
        self.boot_source: dict | None = None
        self.machine_config = default_machine_config()
        self.drives: dict[str, dict] = {}
        self.nets: dict[str, dict] = {}
        self.vsock: dict | None = None
        self.entropy: dict | None = None
        self.serial: dict | None = None
        self.serial_in_fd = -1
        self.logger = Logger(instance_id)
        self.metrics = Metrics(self)
        self.machine = None
        self.attached = False          # kvmvm boot --api-sock: the CLI runs the machine
        self.boot_timer = False        # --boot-timer: log the guest's boot time when it signals
        self.result = None
        self.ended = Flag()
        self._serial_fd = -1

    # --- states ---
    @property
    def started(self) -> bool:
        return self.state != NOT_STARTED or self.machine is not None

    def preboot(self) -> None:
        if self.started:
            raise ApiError(NOT_AFTER_BOOT)

    def postboot(self) -> None:
        if not self.started:
            raise ApiError(NOT_BEFORE_BOOT)

    def configured_boot_resources(self) -> bool:
        """Anything beyond the logger and metrics (snapshot load is refused after it)."""
        return bool(self.boot_source or self.drives or self.nets or self.vsock or self.entropy
                    or self.serial or self.machine_config != default_machine_config())

    # --- the VM ---
    def machine_config_for_kvmvm(self):
        """The kvmvm MachineConfig these API resources describe."""
        from kvmvm.machine import MachineConfig

        bs = self.boot_source
        if bs is None:
            raise ApiError("Cannot start microvm without kernel configuration.")
        args = bs.get("boot_args", DEFAULT_BOOT_ARGS)
        specs = []
        for d in self.ordered_drives():
            specs.append(f"{d['path_on_host']}{',ro' if d['is_read_only'] else ''},id={d['drive_id'][:20]}")
            if d["is_root_device"]:
                root = f"PARTUUID={d['partuuid']}" if d.get("partuuid") else "/dev/vda"
                args = f"{args} root={root} {'ro' if d['is_read_only'] else 'rw'}"
        nets = []
        for n in self.nets.values():
            nets.append(f"tap={n['host_dev_name']}" + (f",mac={n['guest_mac']}" if n.get("guest_mac") else ""))
        vs = self.vsock
        mc = self.machine_config
        return MachineConfig(
            kernel=bs["kernel_image_path"], cmdline=args.strip(), initrd=bs.get("initrd_path"),
            memory_mib=mc["mem_size_mib"], cpus=mc["vcpu_count"], drives=specs, nets=nets,
            vsock=f"cid={vs['guest_cid']},uds={vs['uds_path']}" if vs else None,
            rng=self.entropy is not None, serial_out_fd=self._serial_out_fd(),
            serial_in_fd=self.serial_in_fd)

    def ordered_drives(self) -> list[dict]:
        """The drives in the VM's slot order: the root device first (/dev/vda)."""
        return sorted(self.drives.values(), key=lambda d: not d.get("is_root_device", False))

    def _blk_slot(self, m, drive_id: str):
        ids = [d["drive_id"] for d in self.ordered_drives()]
        slots = [s for s in m.virtio if s.name == "blk"]
        if drive_id not in ids or len(slots) != len(ids):
            raise ApiError(f"Invalid block device ID: {drive_id}")
        return slots[ids.index(drive_id)]

    def _blk_rate_limit(self, m, drive_id: str, rl: dict) -> None:
        from kvmvm.bindings import lib

        rc = lib.kvmvm_vm_virtio_blk_rate_limit(m.vm._vm, self._blk_slot(m, drive_id).base,
                                                _bucket(rl.get("bandwidth")), _bucket(rl.get("ops")))
        if rc < 0:
            raise ApiError(f"Invalid block device ID: {drive_id}")

    def _net_rate_limit(self, m, iface_id: str, cfg: dict) -> None:
        """rx_rate_limiter / tx_rate_limiter present in cfg onto the running device."""
        from kvmvm.bindings import lib

        ids = list(self.nets)
        slots = [s for s in m.virtio if s.name == "net"]
        if iface_id not in ids or len(slots) != len(ids):
            raise ApiError(f"Invalid network interface ID: {iface_id}")
        base = slots[ids.index(iface_id)].base
        for key, rx in (("rx_rate_limiter", 1), ("tx_rate_limiter", 0)):
            rl = cfg.get(key)
            if rl is None:
                continue
            rc = lib.kvmvm_vm_virtio_net_rate_limit(m.vm._vm, base, rx, _bucket(rl.get("bandwidth")),
                                                    _bucket(rl.get("ops")))
            if rc < 0:
                raise ApiError(f"Invalid network interface ID: {iface_id}")

    def set_net_rate_limiters(self, iface_id: str, cfg: dict) -> None:
        """PATCH /network-interfaces on a running VM."""
        self._ended_check()
        self._net_rate_limit(self.machine, iface_id, cfg)
        for key in ("rx_rate_limiter", "tx_rate_limiter"):
            if key in cfg:
                self.nets[iface_id][key] = cfg[key]

    def set_drive_rate_limiter(self, drive_id: str, rl: dict) -> None:
        """PATCH /drives rate_limiter on a running VM: new buckets, full, from now."""
        self._ended_check()
        self._blk_rate_limit(self.machine, drive_id, rl)
        self.drives[drive_id]["rate_limiter"] = rl

    def swap_drive(self, drive_id: str, path: str) -> None:
        """PATCH /drives path_on_host on a running VM: the new file, a config interrupt."""
        import errno

        from kvmvm.bindings import lib

        slot = self._blk_slot(self.machine, drive_id)
        self._ended_check()
        rc = lib.kvmvm_vm_virtio_blk_swap(self.machine.vm._vm, slot.base, path.encode())
        if rc < 0:
            raise ApiError(f"Unable to patch the block device: {path}: {os.strerror(-rc)}"
                           if rc != -errno.ENODEV else f"Invalid block device ID: {drive_id}")
        self.drives[drive_id]["path_on_host"] = path
        self.logger.info(f"Drive {drive_id} now backed by {path}.")

    def _serial_out_fd(self) -> int:
        path = (self.serial or {}).get("serial_out_path")
        if not path:
            return 1
        if self._serial_fd < 0:
            try:
                self._serial_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            except OSError as e:
                raise ApiError(f"Cannot open the serial output {path}: {e.strerror}") from None
        return self._serial_fd

    def start(self) -> None:
        """InstanceStart: build the VM, start its vCPUs, watch for its end in a thread."""
        self.preboot()
        from kvmvm.errors import KvmvmError
        from kvmvm.machine import Machine

        cfg = self.machine_config_for_kvmvm()
        m = None
        try:
            m = Machine(cfg, t0_ns=self.t0_ns)
            m.build()
            for d in self.drives.values():
                if d.get("rate_limiter"):
                    self._blk_rate_limit(m, d["drive_id"], d["rate_limiter"])
            for n in self.nets.values():
                self._net_rate_limit(m, n["iface_id"], n)
            m.start()
        except KvmvmError as e:
            if m is not None:
                m.close()
            raise ApiError(f"Start microVM error: {e}") from None
        self.machine = m
        self.state = RUNNING
        self.logger.info("Successfully started microvm.")
        self.watch()

    def watch(self) -> None:
        """Watch the running VM for its end, in a thread."""
        import threading

        threading.Thread(target=self._watch, name="fc_vmm_wait", daemon=True).start()

    def _watch(self) -> None:
        from kvmvm.machine import Result, outcome_of

        m = self.machine
        stop = None
        boot_logged = not self.boot_timer
        while stop is None:
            stop = m.vm.wait(0.5 if boot_logged else 0.05)
            if not boot_logged:
                boot_logged = self._log_boot_time(m)
        outcome, status, msg = outcome_of(stop, None)
        stats = m.vm.stats()
        res = Result(outcome, stop.reason, status, msg, stop.code, stop.rip,
                     {k: v for k, v in stats.items() if not k.startswith("t_")}, m._timings(stats))
        with self.lock:
            self.metrics.final(stats)
            m.close()
            self.result = res
            self.logger.info(f"Vmm is stopping: {msg}.")
        self.ended.set()

    def _log_boot_time(self, m) -> bool:
        """Firecracker's --boot-timer line, once the guest wrote the boot-timer register."""
        t = m.vm.stats()["t_boot_signal_ns"]
        if not t:
            return False
        us = max(0, (t - self.t0_ns) // 1000)
        with self.lock:
            self.logger.info(f"Guest-boot-time = {us:>6} us {us // 1000} ms")
        return True

    def attach(self, machine) -> None:
        """kvmvm boot --api-sock: serve a machine the CLI built and runs."""
        self.machine = machine
        self.attached = True
        self.state = RUNNING
        cfg = machine.cfg
        self.boot_source = {"kernel_image_path": cfg.kernel, "boot_args": cfg.cmdline}
        if cfg.initrd:
            self.boot_source["initrd_path"] = cfg.initrd
        self.machine_config = dict(default_machine_config(), vcpu_count=cfg.cpus,
                                   mem_size_mib=cfg.memory_mib)
        from kvmvm.devices.virtio import blk, net

        for i, spec in enumerate(cfg.drives):
            d = blk.parse(spec)
            did = d.serial or f"drive{i}"
            self.drives[did] = {"drive_id": did, "is_root_device": False, "cache_type": "Unsafe",
                                "is_read_only": d.readonly, "path_on_host": d.path, "io_engine": "Sync"}
        for i, spec in enumerate(cfg.nets):
            n = net.parse(spec, i)
            iid = f"net{i}"
            self.nets[iid] = {"iface_id": iid, "host_dev_name": n.tap,
                              "guest_mac": ":".join(f"{b:02x}" for b in n.mac)}
        if cfg.vsock:
            opts = dict(p.split("=", 1) for p in cfg.vsock.split(",") if "=" in p)
            self.vsock = {"guest_cid": int(opts.get("cid", "0"), 0), "uds_path": opts.get("uds", "")}
        if cfg.rng:
            self.entropy = {}

    def restored_from(self, fc: dict, overrides_by_iface: dict, vsock_uds: str | None) -> None:
        """GET /vm/config after a snapshot load: the devices as saved (boot-source left out,
        as Firecracker does for restored VMs), with the overrides applied."""
        self.machine_config = dict(default_machine_config(), **fc.get("machine-config", {}))
        self.drives = {d["drive_id"]: d for d in fc.get("drives", [])}
        self.nets = {}
        for n in fc.get("network-interfaces", []):
            n = dict(n)
            if n["iface_id"] in overrides_by_iface:
                n["host_dev_name"] = overrides_by_iface[n["iface_id"]]
            self.nets[n["iface_id"]] = n
        self.vsock = dict(fc["vsock"]) if fc.get("vsock") else None
        if self.vsock and vsock_uds:
            self.vsock["uds_path"] = vsock_uds
        self.entropy = fc.get("entropy")

    def pause(self) -> None:
        self.postboot()
        self._ended_check()
        if self.state != PAUSED:
            self._call("pause", "Failed to pause the vCPUs")
            self.state = PAUSED
            self.logger.info("Vmm is paused.")

    def resume(self) -> None:
        self.postboot()
        self._ended_check()
        if self.state == PAUSED:
            m = self.machine
            if not getattr(m, "started", True):     # restored with resume_vm false: first start
                self._call("start", "Failed to start the vCPUs")
                self.watch()
            else:
                self._call("resume", "Failed to resume the vCPUs")
            self.state = RUNNING
            self.logger.info("Vmm is resumed.")

    def _ended_check(self) -> None:
        if self.result is not None or getattr(self.machine, "vm", None) is None:
            raise ApiError("The microVM has already stopped.")

    def _call(self, verb: str, what: str) -> None:
        from kvmvm.errors import KvmvmError

        try:
            getattr(self.machine, verb)()
        except KvmvmError as e:
            raise ApiError(f"{what}: {e}") from None

    def ctrl_alt_del(self) -> None:
        self.postboot()
        from kvmvm.bindings import lib

        fn = getattr(lib, "kvmvm_vm_i8042_ctrl_alt_del", None)
        vm = getattr(self.machine, "vm", None)
        if fn is None or vm is None:
            raise unsupported("SendCtrlAltDel on this VM")
        rc = fn(vm._vm)
        if rc < 0:
            raise ApiError(f"Cannot send Ctrl+Alt+Del: {os.strerror(-rc)}")

    def stop_vm(self) -> None:
        """The `Stop` action (a kvmvm extension): the VM ends within a second, paused or
        not; the process then exits as after SIGTERM (status 130)."""
        self.postboot()
        self._ended_check()
        self.machine.stop()
        self.logger.info("Vmm is stopping on request.")

    def stop(self) -> None:
        """End the VM now (the CLI's SIGTERM / Ctrl-C; not part of Firecracker's API)."""
        m = self.machine
        if m is not None and m.vm is not None and not self.attached:
            from kvmvm.bindings import lib

            m.vm.stop(lib.KVMVM_STOP_REQUESTED)

    def close(self) -> None:
        self.metrics.close()
        self.logger.close()
        if self._serial_fd >= 0:
            os.close(self._serial_fd)
            self._serial_fd = -1

    # --- GET /vm/config ---
    def full_config(self) -> dict:
        out: dict = {}
        if self.boot_source is not None:
            out["boot-source"] = dict(self.boot_source)
        out["drives"] = [dict(d) for d in self.ordered_drives()]
        out["machine-config"] = dict(self.machine_config)
        out["network-interfaces"] = [dict(n) for n in self.nets.values()]
        if self.vsock is not None:
            out["vsock"] = dict(self.vsock)
        if self.entropy is not None:
            out["entropy"] = dict(self.entropy)
        if self.logger.config is not None:
            out["logger"] = dict(self.logger.config)
        if self.metrics.config is not None:
            out["metrics"] = dict(self.metrics.config)
        return out
