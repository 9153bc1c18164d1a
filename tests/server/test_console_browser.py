"""The web console in real headless Chromium (Debian's ``chromium``, driven by Playwright).

Two consoles run on loopback over one vault: team ``alpha``'s and team ``beta``'s. The
tests log in, push, share, watch beta's view change, revoke, read the audit log, open a
run's loss plot, look at a federated round and generate in the playground; bad input
shows the CLI's own one-line error and changes nothing.

Screenshots go to ``$QLORA_HUB_SCREENSHOTS`` when set (``docs/images`` refreshes the ones
docs/console.md shows), else to a temporary directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.server.console_site import (
    ARGS,
    CHROMIUM,
    VIEWPORT,
    audit_entries,
    build_site,
    confirm,
    login,
    push,
    refs_visible,
    shot,
    stop_site,
)

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)",
)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, embedded_base: Path):
    """Consoles for alpha and beta over one vault, runs, rounds, and adapter directories."""
    built = build_site(tmp_path_factory.mktemp("console"), embedded_base)
    yield built
    stop_site(built)


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = os.environ.get("QLORA_HUB_SCREENSHOTS")
    path = Path(out) if out else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def cli_error(site: dict, capsys: Any, monkeypatch: Any, *args: str) -> str:
    """The one-line error the CLI prints for ``args`` (as team alpha)."""
    from hub.cli import main

    monkeypatch.setenv("QLORA_HUB_HOME", str(site["home"]))
    monkeypatch.setenv("QLORA_HUB_TEAM", "alpha")
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2
    return err[-1]


def test_missing_or_wrong_login_token_is_a_401_page(browser, site, shots) -> None:
    url = site["consoles"]["alpha"]["url"]
    page = browser.new_context(viewport=VIEWPORT).new_page()
    response = page.goto(url + "/adapters")
    assert response.status == 401
    assert page.text_content("#login-message") == "Log in with the token printed at start."
    shot(page, shots, "login")
    response = page.goto(url + "/login?token=not-the-token")
    assert response.status == 401
    assert page.text_content("#login-message") == "Wrong login token."
    page.fill("#token", "also-wrong")
    with page.expect_navigation() as nav:
        page.click("form[action='/login'] button")
    assert nav.value.status == 401
    page.fill("#token", site["consoles"]["alpha"]["state"].sessions.token)
    page.click("form[action='/login'] button")
    assert (
        page.url == url + "/adapters"
        and page.text_content("h1") == "Adapters readable by team alpha"
    )


def test_push_share_revoke_changes_beta_view_and_the_audit_log(browser, site, shots) -> None:
    alpha, beta = login(browser, site, "alpha"), login(browser, site, "beta")
    from hub.base import fingerprint

    push(alpha, site, site["dirs"]["good"], "greeter", base=site["base"])
    assert alpha.url.endswith("/adapters/greeter")
    assert alpha.text_content(".flash") == "pushed greeter@1"
    assert "greeter@1" in refs_visible(site, "alpha") and "greeter@1" not in refs_visible(
        site, "beta"
    )
    beta.reload()
    assert beta.locator("tr[data-ref='greeter@1']").count() == 0

    alpha.fill("#share-team", "beta")
    alpha.click("#share-form button[type=submit]")
    assert alpha.text_content("#question").split() == [
        "Let",
        "team",
        "beta",
        "read",
        "greeter",
        "(every",
        "version)?",
    ]
    shot(alpha, shots, "confirm")
    alpha.click("#confirm")
    assert alpha.text_content(".flash") == "shared greeter with beta (latest shared: greeter@1)"
    alpha.click("#verify-form button")
    assert alpha.text_content(".flash") == "ok greeter@1 (663,582 bytes)"
    row = alpha.locator("tr[data-ref='greeter@1']")
    assert row.locator("code").get_attribute("title") == fingerprint(site["base"])
    assert row.locator("td").nth(5).text_content() == (
        "manifest signature verified; payload: verified: signatures, trust and file hashes"
    )
    shot(alpha, shots, "adapter")
    beta.reload()
    row = beta.locator("tr[data-ref='greeter@1']")
    assert row.locator("td").nth(0).text_content() == "alpha"  # the publisher
    assert row.locator(".readers").text_content() == "alpha, beta"
    assert "greeter@1" in refs_visible(site, "beta")
    shot(beta, shots, "adapters")

    confirm(alpha, "#revoke-form", team="beta")
    assert alpha.text_content(".flash") == "revoked beta from greeter; latest version now greeter@2"
    beta.reload()
    assert beta.locator("tr[data-ref^='greeter@']").count() == 0
    assert not [r for r in refs_visible(site, "beta") if r.startswith("greeter@")]

    alpha.goto(site["consoles"]["alpha"]["url"] + "/audit?name=greeter")
    actions = alpha.locator("#audit .action").all_text_contents()
    assert {"push", "share", "revoke"} <= set(actions)
    assert alpha.text_content("#chain").startswith("chain intact: ")
    alpha.select_option("#f-action", "share")
    alpha.click("form.filters button")
    assert alpha.locator("#audit .action").all_text_contents() == ["share"]
    alpha.goto(site["consoles"]["alpha"]["url"] + "/audit")
    shot(alpha, shots, "audit")


@pytest.mark.parametrize(
    ("form", "cli"),
    [
        (
            {"action": "share", "team": "nobody"},
            ("adapters", "share", "greeter", "--with", "nobody"),
        ),
        (
            {"push": "pickle", "name": "pickled"},
            ("adapters", "push", "{pickle}", "--name", "pickled"),
        ),
        (
            {"push": "good", "name": "team/greeter"},
            ("adapters", "push", "{good}", "--name", "team/greeter"),
        ),
    ],
    ids=["share-unknown-team", "push-pickle", "name-with-separator"],
)
def test_bad_input_shows_the_cli_error_and_changes_nothing(
    browser, site, form, cli, capsys, monkeypatch
) -> None:
    page = login(browser, site, "alpha")
    if "greeter@1" not in refs_visible(site, "alpha") and not any(
        r.startswith("greeter@") for r in refs_visible(site, "alpha")
    ):
        push(page, site, site["dirs"]["good"], "greeter")
    before_refs, before_audit = refs_visible(site, "alpha"), len(audit_entries(site))
    if "push" in form:
        push(page, site, site["dirs"][form["push"]], form["name"])
    else:
        page.goto(site["consoles"]["alpha"]["url"] + "/adapters/greeter")
        confirm(page, "#share-form", team=form["team"])
    shown = page.text_content("#error")
    assert page.url.endswith("/push") or page.url.endswith("/share")
    assert (refs_visible(site, "alpha"), len(audit_entries(site))) == (before_refs, before_audit)
    args = [a.format(**{k: str(v) for k, v in site["dirs"].items()}) for a in cli]
    assert shown == cli_error(site, capsys, monkeypatch, *args)
    assert (refs_visible(site, "alpha"), len(audit_entries(site))) == (before_refs, before_audit)


def test_a_form_without_its_csrf_token_is_403_and_deletes_nothing(browser, site) -> None:
    page = login(browser, site, "alpha")
    url = site["consoles"]["alpha"]["url"]
    push(page, site, site["dirs"]["good"], "keeper")
    response = page.context.request.post(
        url + "/adapters/keeper/delete", form={"confirm": "yes", "version": ""}
    )
    assert response.status == 403
    assert "CSRF token is missing or wrong" in response.text()
    wrong = page.context.request.post(
        url + "/adapters/keeper/delete", form={"confirm": "yes", "csrf_token": "guess"}
    )
    assert wrong.status == 403
    assert "keeper@1" in refs_visible(site, "alpha")
    confirm(page, "#delete-form")
    assert page.text_content(".flash") == "deleted keeper@1"
    assert "keeper@1" not in refs_visible(site, "alpha")


def test_runs_page_plots_loss_and_compares_two_runs(browser, site, shots) -> None:
    page = login(browser, site, "alpha")
    page.goto(site["consoles"]["alpha"]["url"] + "/runs")
    page.click("text=lr-8e-3")
    with page.expect_response(lambda r: "/plots/loss.png" in r.url) as plot:
        page.reload()
    assert plot.value.status == 200 and plot.value.headers["content-type"] == "image/png"
    assert plot.value.body()[:8] == b"\x89PNG\r\n\x1a\n"
    assert page.eval_on_selector("#loss-plot", "img => img.naturalWidth") == 640
    assert page.text_content("#hyperparameters").count("0.008") == 1
    shot(page, shots, "run")
    page.goto(site["consoles"]["alpha"]["url"] + "/runs")
    page.click("text=Side by side")
    page.wait_for_load_state("load")
    assert page.eval_on_selector("#compare-plot", "img => img.naturalWidth") == 640
    rows = page.locator("#compare tbody tr").all_text_contents()
    assert any(r.startswith("≠ learning_rate") for r in rows)
    assert not any(r.startswith("≠ batch_size") for r in rows)
    shot(page, shots, "compare")


def test_rounds_page_shows_each_round_its_contributors_and_result(browser, site, shots) -> None:
    page = login(browser, site, "alpha")
    page.goto(site["consoles"]["alpha"]["url"] + "/rounds")
    r1, r2 = page.locator(".round").all()
    assert r1.locator(".state").text_content() == (
        "aggregated: the key holder can finalize. signed by the key holder, verified "
        "(key holder alpha)."
    )
    assert r1.locator(".published").text_content() == (
        "merged-r1@1 (mean; shares alpha 25%, beta 75%)"
    )
    assert r2.locator(".state").text_content().startswith("collecting: 1 of 2 contributions.")
    assert r2.locator(".missing").text_content() == "beta"
    shot(page, shots, "rounds")


def test_playground_generates_on_the_local_base_as_the_core_would(browser, site, shots) -> None:
    import torch

    from hub.models import load_base

    page = login(browser, site, "alpha")
    push(page, site, site["dirs"]["good"], "playful")
    page.goto(site["consoles"]["alpha"]["url"] + "/playground")
    page.select_option("#adapter", "playful@1")
    page.fill("#max_tokens", "8")
    page.fill("#prompt", "hello")
    page.click("#playground-form button[type=submit]")
    shown = page.text_content("#output")
    shot(page, shots, "playground")
    loaded = load_base(site["hub"], site["base"])
    model = site["hub"].adapters["lora"].load(loaded.model, site["good"], "x")
    batch = loaded.tokenizer(["hello"], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(
            **batch, max_new_tokens=8, do_sample=False, pad_token_id=loaded.tokenizer.pad_token_id
        )
    expected = loaded.tokenizer.decode(
        out[0, batch["input_ids"].shape[1] :], skip_special_tokens=True
    )
    assert shown == expected
    pulls = [e for e in audit_entries(site) if e["action"] == "pull" and e["ref"] == "playful@1"]
    assert pulls and pulls[-1]["where"] == "console"


def test_operator_page_shows_resident_adapters_queue_and_rates(
    browser, small_home, embedded_base, shots
) -> None:
    from tests.server.conftest import start_small_server

    live = start_small_server(small_home, embedded_base)
    try:
        for name in ("r0", "r2"):
            assert live.complete(name, "hello", max_tokens=4).status_code == 200
        context = browser.new_context(
            viewport=VIEWPORT, http_credentials={"username": "ops", "password": live.keys["admin"]}
        )
        page = context.new_page()
        assert page.goto(live.url + "/ui").status == 200
        assert page.locator("#resident tbody th").all_text_contents() == ["r2@1", "r0@1"]
        assert page.text_content("#queue").startswith("0 waiting")
        assert page.locator("#rates tbody th", has_text="/v1/completions").count() == 1
        shot(page, shots, "operator")
        anonymous = browser.new_context().request.get(live.url + "/ui")
        assert anonymous.status == 401 and anonymous.headers["www-authenticate"].startswith("Basic")
    finally:
        live.stop()


def test_every_control_has_a_label_and_tab_reaches_the_skip_link(browser, site) -> None:
    page = login(browser, site, "alpha")
    url = site["consoles"]["alpha"]["url"]
    unlabelled = """els => els.filter(e => !e.labels || e.labels.length === 0)
                          .map(e => e.name || e.id)"""
    controls = "input:not([type=hidden]), select, textarea"
    for path in ("/adapters", "/adapters/greeter", "/push", "/audit", "/runs", "/playground"):
        page.goto(url + path)
        assert page.eval_on_selector_all(controls, unlabelled) == [], path
        assert page.locator("h1").count() == 1, path
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.textContent") == "Skip to content", path
