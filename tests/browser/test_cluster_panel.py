"""The dashboard's cluster panel in a real browser against real cluster nodes.

Three ``meterbox server run --cluster`` nodes on a real three-member etcd cluster
(support.cluster). The panel lists the members with this node marked, says quorum,
and when this node's only etcd member stops answering shows the banner "Not
granting: cluster unavailable" within a few polls, and drops it once etcd is back;
all on a 375 px wide screen without horizontal scroll. A single server has no panel.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from support.browser import Site, screenshot_path
from support.cluster import ClusterNode
from support.etcd import EtcdCluster

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]


def _login(page: Page, url: str, token: str) -> None:
    page.goto(url + "/")
    page.get_by_label("Admin token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Site dashboard")).to_be_visible()


def _no_horizontal_scroll(page: Page) -> None:
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"page is {overflow}px wider than a 375px screen"


def test_the_panel_shows_members_quorum_and_a_banner_when_quorum_is_lost(
    browser: Browser,
    cluster_nodes: list[ClusterNode],
    etcd_cluster: EtcdCluster,
    tmp_path: Path,
) -> None:
    node = cluster_nodes[2]  # talks to etcd member 2 only
    context = browser.new_context(viewport={"width": 375, "height": 812}, device_scale_factor=2)
    page = context.new_page()
    _login(page, node.url, node.site.token)
    panel = page.locator("#cluster")
    expect(panel.get_by_role("heading", name="Cluster")).to_be_visible()
    # Every node appears (the list is polled), this one marked, all up, quorum held.
    rows = panel.get_by_test_id("cluster-members").locator("tbody tr")
    expect(rows).to_have_count(3, timeout=10_000)
    for n in cluster_nodes:
        expect(panel.get_by_test_id("cluster-members")).to_contain_text(n.url)
    this_row = panel.locator("tr[aria-current=true]")
    expect(this_row).to_contain_text(node.url)
    expect(this_row.get_by_test_id("this-node")).to_have_text("(this node)")
    expect(panel.get_by_test_id("cluster-state")).to_contain_text("quorum")
    expect(panel.get_by_test_id("cluster-state")).to_contain_text("3 of 3 nodes up")
    expect(rows.first).to_contain_text("now")
    expect(page.get_by_test_id("cluster-banner")).to_have_count(0)
    _no_horizontal_scroll(page)

    etcd_cluster.pause(2)
    try:
        banner = page.get_by_test_id("cluster-banner")
        expect(banner).to_be_visible(timeout=10_000)
        expect(banner).to_contain_text("Not granting: cluster unavailable")
        expect(page.get_by_role("alert")).to_contain_text("cluster unavailable")
        expect(panel.get_by_test_id("cluster-state")).to_contain_text("no quorum")
        # Cut off from etcd, this node cannot vouch for the others: never "up".
        expect(this_row.get_by_test_id("state")).to_have_text("not granting")
        expect(panel.locator("tr:not([aria-current]) [data-testid=state]")).to_have_text(
            ["unknown", "unknown"]
        )
        # The page says what the API does: this node refuses new seats now.
        r = httpx.post(f"{node.url}/v1/seats/checkout",
                       json={"feature": "cad", "client_id": "b1"}, timeout=10)  # fmt: skip
        assert r.status_code == 503, r.text
        _no_horizontal_scroll(page)
        page.screenshot(path=screenshot_path(tmp_path, "cluster-no-quorum-narrow.png"))
    finally:
        etcd_cluster.resume(2)
    expect(page.get_by_test_id("cluster-banner")).to_have_count(0, timeout=15_000)
    expect(panel.get_by_test_id("cluster-state")).to_contain_text("3 of 3 nodes up")
    context.close()


def test_a_single_server_has_no_cluster_panel(browser: Browser, site: Site) -> None:
    page = browser.new_page()
    _login(page, site.url, site.token)
    expect(page.get_by_test_id("in-use-cad")).to_be_visible()
    expect(page.locator("#cluster")).to_have_count(0)
    expect(page.get_by_role("link", name="Cluster")).to_have_count(0)
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    r = httpx.get(site.url + "/ui/cluster", cookies=cookies, timeout=10)
    assert r.status_code == 200 and "cluster-members" not in r.text, r.text
    page.close()
