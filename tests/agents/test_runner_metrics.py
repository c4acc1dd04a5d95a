"""metrics.json is untrusted (candidate code runs in the process that writes it): the declared proxies are checked
as the world's are."""

from cambrian.agents.runner import check_metrics


def test_a_declared_proxy_must_be_a_number_in_its_range():
    ok = {"val_loss": 0.5, "auc": 0.7, "rating_corr": 0.4, "proxies": ["auc", "rating_corr"]}
    assert check_metrics(ok) is None
    assert check_metrics({**ok, "rating_corr": 3.0}) == "rating_corr = 3.0 is outside [-1, 1]"
    assert check_metrics({k: v for k, v in ok.items() if k != "rating_corr"}) == "rating_corr is missing, not a number"
    assert check_metrics({**ok, "rating_corr": "high"}) == "rating_corr is 'high', not a number"
    assert check_metrics({**ok, "proxies": "auc"}) == "proxies is not a list of metric names"


def test_the_worlds_top_watch_share_is_a_share():
    """The reward's default objective is a share of watch seconds: a negative one is refused, not scored."""
    ok = {"val_loss": 0.5, "auc": 0.7, "top_watch_share": 0.08, "proxies": ["auc", "top_watch_share"]}
    assert check_metrics(ok) is None
    assert check_metrics({**ok, "top_watch_share": -0.5}) == "top_watch_share = -0.5 is outside [0, 1]"
    assert check_metrics({**ok, "top_watch_share": 1.5}) == "top_watch_share = 1.5 is outside [0, 1]"
