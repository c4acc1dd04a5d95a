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
