"""``zincati-py-generator``: the merged configuration as systemd timers (systemd.generator(7)).

Called by systemd as ``zincati-py-generator NORMAL EARLY LATE`` on every boot and every
daemon-reload (one argument, the output directory, is accepted too). Everything is written to
the LATE directory, so a unit of the same name in /etc or /usr/lib wins over ours:

``zincati-py-check.timer`` + ``.service``
    Asks the running agent to check for updates (``zincati-py check --from-timer``) every
    ``steady_interval_secs`` (``OnBootSec=`` + ``OnUnitActiveSec=``), or on ``check_cron``
    (``OnCalendar=``, host local time, ``H`` hashed with the node id). Only when updates are
    enabled. ``rollout_wariness`` W spreads the checks: ``RandomizedDelaySec=`` is W times the
    check interval (``check_cron``: W times one hour), capped at one hour, so a wary node tends
    to check later and never falls a whole interval behind. ``AccuracySec=1s``.
``zincati-py-window-N.timer`` + ``.service`` (N = 1, 2, ... in merge order)
    One per maintenance window when the strategy includes ``periodic`` and updates are
    enabled: fires when the window opens and wakes the agent (``zincati-py wake window``), so
    ``systemctl list-timers`` shows the next window. ``days`` + ``start_time`` become
    ``Mon,Wed *-*-* 03:00:00 ZONE``; a cron window is translated; ZONE is the periodic time
    zone (none for ``localtime``: the host's zone).
``zincati-py-schedule-NAME.timer`` + ``.service``
    One per enabled ``[[schedule]]`` job, rendered by :mod:`zincati_py.schedule.units` (see
    there): ``OnCalendar=`` from the cron translation, ``Persistent=`` from ``catch_up``, a
    ``Type=oneshot`` service running the command, and an ``ExecStopPost=`` hook
    (``zincati-py schedule _record NAME``) that records each run for ``schedule history``.
``timers.target.wants/*.timer``
    Symlinks that start every generated timer.

Schedule names are validated by the config loader (``[A-Za-z0-9][A-Za-z0-9_-]{0,63}``), which
keeps every unit name valid without escaping; names failing that check here are skipped.

A generator must never break boot: problems in the fragments are printed to stderr (the
journal) and only the valid parts are emitted; an unexpected exception is logged and the exit
status is still 0. It imports only the config loader and the cron translation (no D-Bus, no
pystemd), and those only when the inputs changed since the last run: an unchanged boot
replays the last run's output (:mod:`zincati_py.generator_cache`) with builtin modules
alone. ``bench/generator_walltime.py`` measures it against a bare interpreter.
"""

from __future__ import annotations

import os
import sys

from zincati_py import unitfile
from zincati_py.unitfile import escape_specifiers, exec_word, quote_exec_arg

__all__ = ["exec_word", "main", "quote_exec_arg", "render", "schedule_calendar", "schedule_unit"]

# Not typing.TYPE_CHECKING: importing typing costs more than a cached run (mypy knows the name).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from zincati_py.config import ScheduleSettings, Settings, WindowSettings
    from zincati_py.generator_cache import CacheDir, Replay

PREFIX = "zincati-py-"
CHECK_UNIT = "zincati-py-check"
WINDOW_UNIT = "zincati-py-window-{n}"
WANTS_DIR = "timers.target.wants"
MAX_CHECK_DELAY_SECS = 3600
_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def _safe_name(name: str) -> bool:
    """``[A-Za-z0-9][A-Za-z0-9_-]{0,63}``: a valid unit name part without escaping."""
    return (
        0 < len(name) <= 64
        and name[0] != "_"
        and name[0] != "-"
        and all(ch.isascii() and (ch.isalnum() or ch in "_-") for ch in name)
    )


def schedule_unit(name: str, suffix: str = "service") -> str:
    from zincati_py.schedule.units import unit_name

    return unit_name(name, suffix)


# Every line logged by this run, in order: the cache replays them with the units.
_logged: list[str] = []


def _problem(message: str) -> None:
    line = f"zincati-py-generator: {message}"
    _logged.append(line)
    print(line, file=sys.stderr)


def _description(text: str) -> str:
    # One line, no specifiers: control characters would end or corrupt the setting.
    return escape_specifiers("".join(ch if ch.isprintable() else " " for ch in text))


def _executable(root: str) -> str:
    """The ``zincati-py`` next to this generator (a venv, /usr/bin), else /usr/bin/zincati-py.

    Inside the ``root`` prefix (a generator run from an image tree) the path is given as the
    target sees it: ``ROOT/usr/bin/zincati-py`` becomes ``/usr/bin/zincati-py``.
    """
    candidates = []
    if sys.argv and sys.argv[0]:
        candidates.append(
            os.path.join(os.path.dirname(os.path.realpath(sys.argv[0])), "zincati-py")
        )
    candidates.append(os.path.join(os.path.dirname(sys.executable), "zincati-py"))
    real_root = os.path.realpath(root)
    for path in candidates:
        if os.access(path, os.X_OK):
            if os.path.normpath(root) != "/" and path.startswith(real_root.rstrip("/") + "/"):
                return "/" + path[len(real_root) :].lstrip("/")
            return path
    return "/usr/bin/zincati-py"


def _header(fragments: Sequence[Path]) -> str:
    lines = ["# Generated by zincati-py-generator; edit the configuration, not this file."]
    if fragments:
        lines.append("# Configuration fragments (merge order):")
        lines += [f"#   {unitfile.comment(str(f))}" for f in fragments]
    return "\n".join(lines) + "\n"


def _zone_suffix(tz: str | None) -> str | None:
    """What to append to calendar lines for ``tz``: ``localtime``/None mean the host's zone."""
    return None if tz in (None, "localtime") else tz


def check_delay_secs(config: Settings) -> int:
    wariness = config.identity.rollout_wariness
    if not wariness:
        return 0
    timing = config.agent.timing
    interval = MAX_CHECK_DELAY_SECS if timing.check_cron else timing.steady_interval_secs
    return min(round(wariness * interval), MAX_CHECK_DELAY_SECS)


def window_calendar(window: WindowSettings, tz: str, hash_id: str | None) -> list[str]:
    zone = _zone_suffix(tz)
    if window.cron is not None:
        from zincati_py.schedule import translate

        return translate(window.cron, tz=zone, hash_id=hash_id)
    assert window.start_time is not None
    days = ",".join(_WEEKDAYS[d] for d in window.days)
    line = f"{days} *-*-* {window.start_time.strftime('%H:%M')}:00"
    return [f"{line} {zone}" if zone else line]


def schedule_calendar(job: ScheduleSettings, hash_id: str | None) -> list[str]:
    from zincati_py.schedule.units import calendar

    return calendar(job, hash_id)


class Rendered:
    """Unit files (name → text) and the timers ``timers.target`` should want."""

    def __init__(self) -> None:
        self.units: dict[str, str] = {}
        self.timers: list[str] = []

    def add_pair(self, base: str, timer: str, service: str) -> None:
        self.units[f"{base}.timer"] = timer
        self.units[f"{base}.service"] = service
        self.timers.append(f"{base}.timer")


def render(
    config: Settings,
    *,
    fragments: Sequence[Path] = (),
    executable: str = "/usr/bin/zincati-py",
    root: Path | str = "/",
    user: bool = False,
) -> Rendered:
    """The units for ``config``. ``root``/``user`` are passed on to the history hook so it
    writes where the CLI reads and asks the same manager for the run's start time."""
    out = Rendered()
    header = _header(fragments)
    exe = exec_word(executable)
    hash_id = config.identity.node_uuid

    if config.updates.enabled:
        _render_check(out, config, header, exe, hash_id)
        if "periodic" in config.updates.strategy:
            _render_windows(out, config, header, exe, hash_id)
    hook_args = ""
    if str(root) != "/":
        hook_args += f" --root {exec_word(str(root))}"
    if user:
        hook_args += " --user"
    for job in config.schedules:
        if not job.enabled:
            continue
        if not _safe_name(job.name):
            _problem(f"schedule {job.name!r}: not a valid unit name part; job skipped")
            continue
        _render_schedule(out, job, header, exe, hash_id, hook_args)
    if config.agent.hooks.commands:
        from zincati_py.health import units as health_units

        try:
            hook = health_units.render(config, header, str(root), user)
        except unitfile.UnsafeValue as exc:
            _problem(f"agent.hooks.commands: {exc}; no hook unit")
            hook = None
        if hook is not None:
            out.units[health_units.TEMPLATE] = hook
    return out


def _render_check(
    out: Rendered, config: Settings, header: str, exe: str, hash_id: str | None
) -> None:
    timing = config.agent.timing
    if timing.check_cron:
        from zincati_py.schedule import CronError, translate

        try:
            lines = translate(timing.check_cron, hash_id=hash_id)
        except CronError as exc:
            _problem(f"agent.timing.check_cron: {exc}; using steady_interval_secs")
            lines = []
    else:
        lines = []
    if lines:
        when = "".join(f"OnCalendar={line}\n" for line in lines)
        what = f"on cron {timing.check_cron}"
    else:
        secs = timing.steady_interval_secs
        when = f"OnBootSec={secs}s\nOnUnitActiveSec={secs}s\n"
        what = f"every {secs}s"
    delay = check_delay_secs(config)
    timer = (
        f"{header}\n[Unit]\nDescription={_description(f'zincati-py update check ({what})')}\n"
        f"\n[Timer]\n{when}"
        + (f"RandomizedDelaySec={delay}s\n" if delay else "")
        + "AccuracySec=1s\n"
    )
    service = (
        f"{header}\n[Unit]\nDescription=zincati-py update check\n"
        "\n[Service]\nType=oneshot\n"
        f"ExecStart={exe} check --from-timer\n"
    )
    out.add_pair(CHECK_UNIT, timer, service)


def _render_windows(
    out: Rendered, config: Settings, header: str, exe: str, hash_id: str | None
) -> None:
    from zincati_py.schedule import CronError

    periodic = config.updates.periodic
    for n, window in enumerate(periodic.windows, start=1):
        try:
            lines = window_calendar(window, periodic.time_zone, hash_id)
        except CronError as exc:
            _problem(f"{window.source}: updates.periodic.window: {exc}; window skipped")
            continue
        if window.cron is not None:
            what = f"cron {window.cron}"
        else:
            assert window.start_time is not None
            days = ",".join(_WEEKDAYS[d] for d in window.days)
            what = f"{days} {window.start_time.strftime('%H:%M')}"
        what += f" {periodic.time_zone}, {window.length_minutes} min"
        base = WINDOW_UNIT.format(n=n)
        timer = (
            f"{header}\n[Unit]\n"
            f"Description={_description(f'zincati-py maintenance window {n} opens ({what})')}\n"
            "\n[Timer]\n" + "".join(f"OnCalendar={line}\n" for line in lines) + "AccuracySec=1s\n"
        )
        service = (
            f"{header}\n[Unit]\nDescription=zincati-py maintenance window {n} opens\n"
            "\n[Service]\nType=oneshot\n"
            f"ExecStart={exe} wake window\n"
        )
        out.add_pair(base, timer, service)


def _render_schedule(
    out: Rendered,
    job: ScheduleSettings,
    header: str,
    exe: str,
    hash_id: str | None,
    hook_args: str,
) -> None:
    """A job's units come from zincati_py.schedule.units (the scheduling domain)."""
    from zincati_py.schedule import units

    try:
        job_units = units.render_job(
            job, header=header, exe=exe, hash_id=hash_id, hook_args=hook_args
        )
    except units.JobSkipped as exc:
        _problem(str(exc))
        return
    for note in job_units.notes:
        _problem(note)
    out.add_pair(job_units.base, job_units.timer, job_units.service)
    out.units.update(job_units.extra)


def write(rendered: Rendered, directory: Path | str) -> None:
    """Write the units and ``timers.target.wants`` links into ``directory``."""
    _write(rendered.units, rendered.timers, str(directory))


def _write(units: dict[str, str], timers: list[str], directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
    for name, text in units.items():
        fd = os.open(os.path.join(directory, name), flags, 0o666)
        with open(fd, "w", encoding="utf-8") as f:
            f.write(text)
    if timers:
        wants = os.path.join(directory, WANTS_DIR)
        os.makedirs(wants, exist_ok=True)
        for timer in timers:
            link = os.path.join(wants, timer)
            if os.path.lexists(link):
                os.unlink(link)
            os.symlink(f"../{timer}", link)


def generate(directory: Path | str, root: str | None = None, *, user: bool | None = None) -> int:
    """Load the configuration under ``root`` and write its units; returns the error count."""
    if user is None:
        user = os.environ.get("SYSTEMD_SCOPE") == "user"
    return _rendered_run(str(directory), root, user)[1]


def _generate_cached(directory: str) -> None:
    """``generate`` for the root systemd gives us, replaying the last run when no input
    changed; the memo is an optimisation only: any failure of its own falls back to
    computing, and nothing of it is written unless the run completed."""
    from zincati_py import generator_cache as cache

    root = cache.resolve_root()
    user = os.environ.get("SYSTEMD_SCOPE") == "user"
    exe = _executable(root)
    dirs = cache.open_dirs(root, user)
    try:
        replays = []
        for cache_dir in dirs:  # /run first: it holds this boot's latest
            replay = cache.load(cache_dir)
            if replay is None or not replay.code_unchanged():
                continue  # none, or computed by other code: neither output nor translations
            replays.append(replay)
            try:
                fingerprint = cache.inputs(root, exe, user, cache.environment(replay.tzpath))
            except cache.Uncacheable:
                break
            if fingerprint == replay.inputs:
                for line in replay.log:
                    print(line, file=sys.stderr)
                _write(replay.units, replay.timers, directory)
                return
        _computed_run(dirs, replays[0] if replays else None, directory, root, exe, user)
    finally:
        for cache_dir in dirs:
            cache_dir.close()


def _computed_run(
    dirs: list[CacheDir], replay: Replay | None, directory: str, root: str, exe: str, user: bool
) -> None:
    """Compute and write the units, then keep them (and the translations) for the next run."""
    if not dirs:
        _rendered_run(directory, root, user)
        return
    import zoneinfo

    from zincati_py import generator_cache as cache
    from zincati_py.schedule import cron

    tzpath = list(zoneinfo.TZPATH)
    try:
        env = cache.environment(tzpath)
        fingerprint = cache.inputs(root, exe, user, env)  # read before the inputs are
    except cache.Uncacheable:
        env, fingerprint = None, None
    modules: dict[str, object] = {}
    if replay is not None and env is not None and replay.environment == env:
        cron.MEMO.update(replay.translations)  # computed by the same code on the same zones
        modules.update(replay.modules)  # (croniter, when they needed it)
    del _logged[:]
    rendered, _ = _rendered_run(directory, root, user)
    if env is None:
        return
    modules.update(cache.loaded_modules())
    for cache_dir in dirs:
        try:  # noqa: SIM105 (contextlib is an import the cached path does without)
            cache.save(
                cache_dir,
                fingerprint=fingerprint,
                environment=env,
                # The latest ones (this run's come last), so the file cannot grow unbounded.
                translations=dict(list(cron.MEMO.items())[-cache.MAX_TRANSLATIONS :]),
                tzpath=tzpath,
                units=rendered.units,
                timers=rendered.timers,
                log=list(_logged),
                modules=modules,
            )
        except OSError:
            pass  # read-only (/var at boot) or full: a later run writes it


def _rendered_run(directory: str, root: str | None, user: bool) -> tuple[Rendered, int]:
    """``generate``: what it wrote, and the number of errors."""
    from zincati_py.config import load

    result = load(root)
    for problem in result.problems:
        _problem(str(problem))
    rendered = render(
        result.config,
        fragments=result.fragments,
        executable=_executable(str(result.paths.root)),
        root=result.paths.root,
        user=user,
    )
    write(rendered, directory)
    return rendered, len(result.errors)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) not in (1, 3):
        _problem("usage: zincati-py-generator NORMAL_DIR EARLY_DIR LATE_DIR (or OUTPUT_DIR)")
        return os.EX_USAGE
    try:
        _generate_cached(args[-1])
    except Exception as exc:
        # Never break boot: the timers from the previous run are gone either way, say why.
        _problem(f"internal error, no units generated: {type(exc).__name__}: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
