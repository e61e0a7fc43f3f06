"""The simulators without a network: scenarios load or fail with `file:line: message` and exit 2,
plays are deterministic, every event is a valid contract event, and the subsystems behave as configured
(office hours, channel mix, incidents, silences, rates, pacing, open-ended loops)."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from datetime import datetime
from pathlib import Path

import httpx
import orjson
import pytest
from ioc.connectors.http_poll.poller import probe
from ioc.simulators.areas import AreaList, AreasError
from ioc.simulators.cli import sim_app
from ioc.simulators.play import Player, events, plan
from ioc.simulators.scenario import SCENARIO_DIR, ScenarioError, load_scenario, resolve, shipped
from ioc.simulators.subsystems.base import WorkHours
from ioc.simulators.subsystems.probes import HealthServer
from typer.testing import CliRunner

from ioc.config import PollTarget
from ioc.envelope import EVENT_ADAPTER, DossierEvent, StatusEvent, TelemetryEvent

MONDAY = "2026-03-02T00:00:00+07:00"
runner = CliRunner()


def play(name: str, *, start: str = MONDAY, **flags: object) -> list[dict[str, object]]:
    scenario = load_scenario(resolve(name))
    how = plan(scenario, start=datetime.fromisoformat(start), speed=0, **flags)  # type: ignore[arg-type]
    return [orjson.loads(payload) for _, _, payload in events(scenario, how)]


@pytest.fixture(scope="module")
def province_day() -> list[dict[str, object]]:
    return play("province-day")


def test_shipped_scenarios_load_and_are_listed() -> None:
    names = [name for name, _ in shipped()]
    assert {"demo", "province-day", "smoke"} <= set(names)
    for name in names:
        scenario = load_scenario(SCENARIO_DIR / f"{name}.yaml")
        assert scenario.description and scenario.expect, name
    result = runner.invoke(sim_app, ["list"])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert any(line.startswith("province-day ") and "Bình Thuận" in line for line in lines)


GOOD = """\
description: test
duration: 30m
subsystems:
  environment: {rate: 0.2, stations: ["22945"]}
incidents:
  - {kind: aqi-spike, area: "22945", at: 5m, for: 10m}
expect:
  - {rule: aqi-bad, labels: {area: "22945"}, by: 20m}
"""

BAD = [
    ("unknown subsystem", GOOD.replace("  environment:", "  weather: {}\n  environment:"), 4,
     "subsystems.weather: unknown subsystem (expected one of dossiers, cells, environment, probes)"),
    ("bad duration", GOOD.replace("duration: 30m", "duration: 30 minutes"), 2,
     "duration: '30 minutes' is not a duration"),
    ("bad incident duration", GOOD.replace("for: 10m", "for: ten"), 6, "incidents[0].for: 'ten' is not a duration"),
    ("incident outside the registry", GOOD.replace('area: "22945", at', 'area: "99999", at'), 6,
     "incidents[0].area: '99999' is not in the areas ("),
    ("unquoted area code", GOOD.replace('area: "22945", at', "area: 22945, at"), 6,
     'incidents[0].area: expected a string (quote codes, e.g. "22945")'),
    ("unknown incident kind", GOOD.replace("kind: aqi-spike", "kind: flood"), 6,
     "incidents[0].kind: unknown kind 'flood'"),
    ("area outside the focus", GOOD.replace("duration: 30m", 'duration: 30m\nprovince: {code: "68", former: "60"}')
     .replace('area: "22945", at', 'area: "24820", at').replace('stations: ["22945"]', 'stations: ["24820"]'), 7,
     "incidents[0].area: '24820' is not formed from the former province '60'"),
    ("areas from the API without --api", GOOD.replace("duration: 30m", 'duration: 30m\nprovince: {areas: api}'), 3,
     "province.areas: `api` reads the areas from the daemon: give --api"),
    ("unknown key", GOOD.replace("duration: 30m", "duration: 30m\nspeed: 2"), 3, "speed: unknown key"),
    ("unknown subsystem key", GOOD.replace("rate: 0.2,", "rate: 0.2, colour: red,"), 4,
     "subsystems.environment.colour: unknown key"),
    ("incident of a subsystem not played",
     GOOD.replace("expect:", "  - {kind: outage, area: '22945', at: 1m, for: 5m}\nexpect:"), 7,
     "incidents[1].kind: outage incidents need the cells subsystem"),
    ("area without a station", GOOD.replace('area: "22945", at', 'area: "22954", at'), 6,
     "incidents[0].area: '22954' has no station"),
    ("YAML syntax", GOOD.replace("duration: 30m", "duration: [30m"), 3, "YAML syntax error"),
    ("expected after the duration", GOOD.replace("by: 20m", "by: 2h"), 8, "expect[0].by: is after the scenario"),
]


@pytest.mark.parametrize(("case", "text", "line", "message"), BAD, ids=[case[0] for case in BAD])
def test_a_bad_scenario_names_file_and_line_and_exits_2(tmp_path: Path, case: str, text: str, line: int,
                                                        message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ScenarioError) as raised:
        load_scenario(path)
    assert any(problem.startswith(f"{path}:{line}: ") and message in problem for problem in raised.value.problems), \
        raised.value.problems
    result = runner.invoke(sim_app, ["run", str(path), "--to", "-", "--speed", "0"])
    assert result.exit_code == 2
    assert result.stdout == ""  # nothing was sent
    assert f"{path}:{line}: " in result.stderr


def test_the_good_scenario_of_those_cases_loads(tmp_path: Path) -> None:
    path = tmp_path / "good.yaml"
    path.write_text(GOOD, encoding="utf-8")
    assert load_scenario(path).incidents[0].area == "22945"


def test_an_unknown_scenario_name_and_bad_flags_exit_2() -> None:
    result = runner.invoke(sim_app, ["run", "no-such-scenario", "--to", "-"])
    assert result.exit_code == 2 and "shipped: demo" in result.stderr
    for flags, message in ((["--duration", "soon"], "--duration"), (["--start", "yesterday"], "--start"),
                           (["--start", "2026-03-02T08:00:00"], "no UTC offset"),
                           (["--to", "ftp://x"], "is not mqtt://")):
        args = ["run", "smoke", "--to", "-", "--speed", "0", *flags]
        result = runner.invoke(sim_app, args)
        assert result.exit_code == 2 and message in result.stderr, (flags, result.stderr)


def test_same_scenario_seed_and_start_give_the_same_bytes() -> None:
    args = ["run", "province-day", "--to", "-", "--speed", "0", "--start", MONDAY, "--duration", "6h"]
    first = runner.invoke(sim_app, args)
    second = runner.invoke(sim_app, args)
    other_seed = runner.invoke(sim_app, [*args, "--seed", "7"])
    other_start = runner.invoke(sim_app, [*args[:-4], "--start", "2026-03-02T00:00:01+07:00", "--duration", "6h"])
    assert first.exit_code == second.exit_code == other_seed.exit_code == 0
    assert first.stdout_bytes.count(b"\n") > 10_000
    assert first.stdout_bytes == second.stdout_bytes
    assert other_seed.stdout_bytes != first.stdout_bytes
    first_ids = {orjson.loads(line)["id"] for line in first.stdout_bytes.splitlines()}
    assert first_ids.isdisjoint(orjson.loads(line)["id"] for line in other_start.stdout_bytes.splitlines())


def test_every_event_of_a_day_validates(province_day: list[dict[str, object]]) -> None:
    assert len(province_day) > 50_000
    kinds = Counter(type(EVENT_ADAPTER.validate_json(orjson.dumps(event))) for event in province_day)
    assert kinds[DossierEvent] > 3000 and kinds[StatusEvent] > 30_000 and kinds[TelemetryEvent] > 1000
    ids = Counter((event["source"], event["id"]) for event in province_day)
    assert ids.most_common(1)[0][1] == 1  # ids are unique per source
    times = [datetime.fromisoformat(str(event["time"])).timestamp() for event in province_day]
    assert times == sorted(times)  # one stream, in time order


def test_dossiers_keep_office_hours_and_the_channel_mix(province_day: list[dict[str, object]]) -> None:
    hours = WorkHours()
    dossiers = [e for e in province_day if e["type"] == "dossier"]
    # The backlog surge (at 6h, due 30m later) keeps no office hours: leave it out.
    surge = {e["dossier_id"] for e in dossiers if e["area"] == "22945" and e["due_at"] == "2026-03-02T06:30:00.000+07:00"}
    assert len(surge) == 30
    normal = [e for e in dossiers if e["dossier_id"] not in surge]

    def local(event: dict[str, object], key: str = "time") -> float:
        return datetime.fromisoformat(str(event[key])).timestamp()

    received = [e for e in normal if e["status"] == "received"]
    assert all(hours.is_open(local(e)) for e in received if e["channel"] != "online")
    assert all(hours.is_open(local(e)) for e in normal if e["status"] != "received")  # officers' steps
    night = [e for e in received if not hours.is_open(local(e))]
    assert night and all(e["channel"] == "online" for e in night)
    office = Counter(e["channel"] for e in received if hours.is_open(local(e)))
    total = sum(office.values())
    assert abs(office["online"] / total - 0.72) < 0.05
    assert abs(office["counter"] / total - 0.25) < 0.05
    by_dossier: dict[object, list[dict[str, object]]] = {}
    for event in normal:
        by_dossier.setdefault(event["dossier_id"], []).append(event)
    finished = [steps[-1] for steps in by_dossier.values() if "finished_at" in steps[-1]]
    assert all(steps[0]["status"] == "received" for steps in by_dossier.values())
    assert all(local(e, "received_at") <= local(e, "finished_at") for e in finished)
    late = [e for e in finished if local(e, "finished_at") > local(e, "due_at")]
    assert 0 < len(late) < 0.05 * len(finished)  # `late: 0.01`, plus same-day ones finishing after hours


def test_a_supplement_moves_the_due_date_by_the_citizens_days(tmp_path: Path) -> None:
    path = tmp_path / "dossiers.yaml"
    path.write_text("description: a week of dossiers\nduration: 7d\nsubsystems:\n"
                    "  dossiers: {rate: 0.05, supplement: 0.5}\n", encoding="utf-8")
    scenario = load_scenario(path)
    how = plan(scenario, speed=0, start=datetime.fromisoformat(MONDAY))
    by_dossier: dict[object, list[dict[str, object]]] = {}
    for _, _, payload in events(scenario, how):
        event = orjson.loads(payload)
        by_dossier.setdefault(event["dossier_id"], []).append(event)
    moved = 0
    for steps in by_dossier.values():
        statuses = [e["status"] for e in steps]
        if "supplement" not in statuses or statuses.index("supplement") + 1 >= len(steps):
            continue
        asked, resumed = steps[statuses.index("supplement")], steps[statuses.index("supplement") + 1]
        assert resumed["status"] == "processing"
        away = (datetime.fromisoformat(str(resumed["time"])) - datetime.fromisoformat(str(asked["time"])))
        moved_by = (datetime.fromisoformat(str(resumed["due_at"])) - datetime.fromisoformat(str(asked["due_at"])))
        assert moved_by.total_seconds() == pytest.approx(away.total_seconds(), abs=0.002)
        moved += 1
    assert moved > 20


def test_incidents_happen_where_and_when_the_scenario_says(province_day: list[dict[str, object]]) -> None:
    start = datetime.fromisoformat(MONDAY).timestamp()

    def offset(event: dict[str, object]) -> float:
        return datetime.fromisoformat(str(event["time"])).timestamp() - start

    down = [e for e in province_day if e["source"] == "viettel-ran" and e["area"] == "22954"
            and e["state"] == "down" and 3 * 3600 <= offset(e) < 3 * 3600 + 45 * 60]
    assert {e["entity"] for e in down} == {"VTL-22954-01", "VTL-22954-02", "VTL-22954-03"}
    assert not [e for e in province_day if e["source"] == "vnpt-ran" and e["area"] == "22954"
                and e["state"] == "down" and 3 * 3600 + 120 <= offset(e) < 3 * 3600 + 2700]
    silent = [e for e in province_day if e["source"] == "qtmt-aqi" and 12 * 3600 <= offset(e) < 12.5 * 3600]
    assert silent == []
    bad_air = [e for e in province_day if e.get("metric") == "env.aqi" and e["area"] == "22945"
               and float(e["value"]) >= 151]  # type: ignore[arg-type]
    assert bad_air and all(15 * 3600 <= offset(e) < 15 * 3600 + 2400 for e in bad_air)
    assert max(float(e["value"]) for e in bad_air) == pytest.approx(175, abs=15)  # type: ignore[arg-type]
    probes = [e for e in province_day if e["source"] == "ioc-probe" and e["entity"] == "mot-cua"
              and e["state"] == "down"]
    assert probes and all(18 * 3600 <= offset(e) < 18 * 3600 + 600 for e in probes)
    surge = [e for e in province_day if e["type"] == "dossier" and e["area"] == "22945"
             and e["status"] == "received" and 6 * 3600 <= offset(e) < 6 * 3600 + 1080
             and e["channel"] == "counter" and e["procedure"] == "2.000908"]
    assert len(surge) >= 30


def test_without_start_the_play_ends_now() -> None:
    scenario = load_scenario(resolve("smoke"))
    how = plan(scenario, speed=0, now=lambda: 1_800_000_000.0)
    assert how.start + scenario.duration == pytest.approx(1_800_000_000.0)
    last = max(offset for offset, _, _ in events(scenario, how))
    assert how.start + last <= 1_800_000_000.0
    live = plan(scenario, speed=1, now=lambda: 1_800_000_000.0)
    assert live.duration is None and live.start == 1_800_000_000.0


def test_an_open_ended_play_loops_its_incidents() -> None:
    scenario = load_scenario(resolve("smoke"))
    how = plan(scenario, speed=1, start=datetime.fromisoformat(MONDAY))
    assert how.duration is None
    cycle = scenario.duration
    stream = itertools.takewhile(lambda item: item[0] < 3 * cycle, events(scenario, how))
    spikes = sorted({int(offset // cycle) for offset, _, payload in stream
                     if b'"env.aqi"' in payload and orjson.loads(payload)["value"] >= 151})
    assert spikes == [0, 1, 2]


def test_rate_scales_every_subsystem() -> None:
    scenario = load_scenario(resolve("smoke"))
    how = plan(scenario, speed=0, start=datetime.fromisoformat(MONDAY), duration=600, rate=50)
    counts = Counter(source for _, source, _ in events(scenario, how))
    assert sum(counts.values()) == pytest.approx(50 * 600, rel=0.01)
    assert counts["qtmt-aqi"] / counts["ioc-probe"] == pytest.approx(0.2 / 0.1, rel=0.01)


def test_speed_paces_the_play_on_its_clock() -> None:
    scenario = load_scenario(resolve("smoke"))
    how = plan(scenario, speed=60, start=datetime.fromisoformat(MONDAY))
    now = [0.0]
    sent: list[tuple[float, str]] = []

    def sleep(seconds: float) -> None:
        now[0] += seconds

    player = Player(scenario, how, lambda source, payload: sent.append((now[0], source)),
                    clock=lambda: now[0], sleep=sleep)
    stats = player.run()
    assert stats.events == len(sent) == 720
    assert now[0] == pytest.approx(scenario.duration / 60, abs=1)  # 40 minutes at 60x: 40 s
    offsets = [offset for offset, _, _ in events(scenario, how)]
    assert all(abs(at - offset / 60) < 0.3 for (at, _), offset in zip(sent, offsets, strict=True))


def test_health_server_answers_as_the_schedule_says() -> None:
    states = {"dvc-portal": "up", "mot-cua": "down"}
    with HealthServer(list(states), slow_seconds=0.3, state_of=states.__getitem__) as server:
        assert httpx.get(server.url("dvc-portal")).status_code == 200
        assert httpx.get(server.url("mot-cua")).status_code == 503
        assert httpx.get(server.url("nothing")).status_code == 404
        server.set_state("mot-cua", "degraded")

        async def probe_all() -> list[str]:
            async with httpx.AsyncClient() as client:
                targets = [PollTarget(url=server.url(name), entity=name, degraded_after=0.2, timeout=2)
                           for name in states]
                return [(await probe(client, target)).state for target in targets]

        assert asyncio.run(probe_all()) == ["up", "degraded"]  # as the daemon's poll connector sees it


def test_the_readme_scenario_example_loads(tmp_path: Path) -> None:
    readme = (SCENARIO_DIR.parent / "README.md").read_text(encoding="utf-8")
    example = readme.split("## Writing a scenario\n\n```yaml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "example.yaml"
    path.write_text(example, encoding="utf-8")
    scenario = load_scenario(path)
    assert [e.rule for e in scenario.expect] == ["aqi-bad", "aqi-hour-avg"]
    assert scenario.sources() == ["qtmt-aqi", "ioc-probe"]


def test_history_sends_the_last_part_at_once_then_goes_on_in_real_time() -> None:
    scenario = load_scenario(resolve("smoke"))
    how = plan(scenario, speed=1, history=600, now=lambda: 1_800_000_000.0)
    assert how.duration is None and how.start == 1_800_000_000.0 - 600  # offset 600 is now
    now = [0.0]
    sent: list[tuple[float, float]] = []  # (when sent on the player's clock, offset)

    def sleep(seconds: float) -> None:
        now[0] += seconds

    def publish(source: str, payload: bytes) -> None:
        sent.append((now[0], datetime.fromisoformat(orjson.loads(payload)["time"]).timestamp() - how.start))

    Player(scenario, how, publish, clock=lambda: now[0], sleep=sleep).run(stop=lambda: now[0] >= 60)
    primed = [at for at, offset in sent if offset < 600]
    assert len(primed) == pytest.approx(0.3 * 600, abs=5) and set(primed) == {0.0}  # all at once, first
    live = [(at, offset) for at, offset in sent if offset >= 600]
    assert live and all(abs(at - (offset - 600)) < 0.3 for at, offset in live)  # then in real time
    assert max(offset for _, offset in live) == pytest.approx(660, abs=5)


def test_history_only_for_a_play_from_now_on() -> None:
    for flags, message in ((["--speed", "0"], "--history: only"), (["--duration", "10m"], "--history: only"),
                           (["--start", MONDAY], "--history: the play"), (["--history", "soon"], "--history")):
        result = runner.invoke(sim_app, ["run", "smoke", "--to", "-", "--history", "10m", *flags])
        assert result.exit_code == 2 and message in result.stderr, (flags, result.stderr)


def test_an_areas_file_names_its_mistakes_by_line(tmp_path: Path) -> None:
    path = tmp_path / "areas.csv"
    path.write_text("# a comment\ncode,name,level,parent,valid_from,valid_to,former_provinces\n"
                    "68,Tỉnh Lâm Đồng,province,,2025-07-01,,\n22945,Phường Phan Thiết,ward,68,,,60\n"
                    "22954,Phường Tiến Thành,commune,68,2025-13-01,,60\n", encoding="utf-8")
    with pytest.raises(AreasError) as raised:
        AreaList.from_csv(path)
    assert raised.value.problems == [f"{path}:4: level: 'ward' is not one of province, district, commune",
                                     f"{path}:5: valid_from: '2025-13-01' is not a date (YYYY-MM-DD)"]
    scenario = tmp_path / "bad.yaml"
    scenario.write_text(GOOD.replace("duration: 30m", "duration: 30m\nprovince: {areas: areas.csv}"), encoding="utf-8")
    result = runner.invoke(sim_app, ["run", str(scenario), "--to", "-", "--speed", "0"])
    assert result.exit_code == 2 and f"{path}:4: level" in result.stderr
