"""The strategy backtest on hand-made price paths whose outcome can be worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from quanttrain.trainer import backtest
from quanttrain.trainer.config import (
    ExitRuleType,
    PortfolioSettings,
    PositionSizing,
    PredictionTarget,
    RiskLimits,
)


def _portfolio(**overrides) -> PortfolioSettings:
    settings = {
        "name": "test", "position_sizing": PositionSizing.FIXED, "max_position_size": 0.5,
        "stop_loss_pct": 0.02, "take_profit_pct": 0.04, "rebalance_frequency_hours": 24,
        "risk": RiskLimits(transaction_cost_bps=0.0, max_drawdown=0.5, max_daily_loss=0.5),
    }
    settings.update(overrides)
    return PortfolioSettings(**settings)


def _path(close, high=None, low=None, open_=None) -> backtest.PricePath:
    close = np.asarray(close, dtype=float)
    return backtest.PricePath(
        close=close,
        high=np.asarray(high if high is not None else close, dtype=float),
        low=np.asarray(low if low is not None else close, dtype=float),
        open=None if open_ is None else np.asarray(open_, dtype=float),
    )


def _run(path, direction, portfolio, confidence=None, **options):
    direction = np.asarray(direction)
    confidence = np.full(direction.shape, 0.8) if confidence is None else np.asarray(confidence)
    return backtest.backtest(path, direction, confidence, portfolio, threshold=0.6, interval_minutes=1440, **options)


def test_take_profit_closes_long_at_its_level():
    path = _path([100, 101, 102, 103], high=[100, 101.5, 105, 103], low=[100, 100.5, 101, 102])
    result = _run(path, [1, 1, 0, 0], _portfolio())
    trade = result.trades[0]
    assert trade.exit_reason == "take profit"
    assert trade.exit_price == pytest.approx(104.0)
    assert result.metrics.total_return == pytest.approx(1.005 * (1 + 0.5 * (104 / 101 - 1)) - 1)


def test_stop_loss_closes_long_at_its_level_with_costs():
    portfolio = _portfolio(risk=RiskLimits(transaction_cost_bps=10.0, max_drawdown=0.5))
    path = _path([100, 99, 100], high=[100, 100, 100], low=[100, 97, 99])
    result = _run(path, [1, 0, 0], portfolio)
    assert result.trades[0].exit_reason == "stop loss"
    assert result.trades[0].exit_price == pytest.approx(98.0)
    assert result.metrics.total_return == pytest.approx(0.9995 * 0.99 * 0.9995 - 1)


def test_gap_through_stop_fills_at_the_open():
    path = _path([100, 96], high=[100, 97], low=[100, 94], open_=[100, 95])
    result = _run(path, [1, 0], _portfolio())
    assert result.trades[0].exit_price == pytest.approx(95.0)


def test_stop_loss_comes_first_when_both_levels_touched():
    path = _path([100, 100], high=[100, 105], low=[100, 97])
    result = _run(path, [1, 0], _portfolio())
    assert result.trades[0].exit_reason == "stop loss"


def test_short_position_profits_from_falling_price():
    path = _path([100, 99, 98], high=[100, 99.5, 98.5], low=[100, 98.5, 97.5])
    result = _run(path, [-1, -1, 0], _portfolio())
    assert result.trades[0].direction == -1
    assert result.metrics.total_return > 0


def test_round_trip_without_price_change_costs_twice_the_fee():
    portfolio = _portfolio(risk=RiskLimits(transaction_cost_bps=20.0, max_drawdown=0.5))
    result = _run(_path([100, 100, 100]), [1, 0, 0], portfolio)
    assert result.metrics.total_return == pytest.approx((1 - 0.002 * 0.5) ** 2 - 1)
    assert result.metrics.hit_rate == 0.0


def test_max_drawdown_limit_stops_trading():
    portfolio = _portfolio(max_position_size=1.0, risk_management=True, stop_loss_pct=0.5, take_profit_pct=1.0,
                           risk=RiskLimits(transaction_cost_bps=0.0, max_drawdown=0.1))
    path = _path([100, 85, 90, 95, 100])
    result = _run(path, [1, 1, 1, 1, 0], portfolio)
    assert result.halted_at == 1
    assert result.trades[0].exit_reason == "max drawdown"
    assert result.metrics.total_return == pytest.approx(-0.15)


def test_flat_signals_trade_nothing():
    result = _run(_path([100, 101, 102]), [0, 0, 0], _portfolio())
    assert result.metrics.trades == 0
    assert result.metrics.total_return == 0.0


def test_kelly_size_is_capped_by_max_position():
    direction = np.array([1])
    portfolio = _portfolio(position_sizing=PositionSizing.KELLY, max_position_size=0.3)
    sizes = backtest.position_sizes(direction, np.array([0.8]), np.array([100.0]), portfolio, validation_hit_rate=0.6)
    # Payoff ratio 0.04 / 0.02 = 2, so Kelly is 0.6 - 0.4 / 2 = 0.4 before the cap.
    assert sizes[0] == pytest.approx(0.3)


def test_ml_based_size_scales_with_confidence_and_weight():
    portfolio = _portfolio(position_sizing=PositionSizing.ML_BASED, max_position_size=0.5, ml_signal_weight=0.5)
    sizes = backtest.position_sizes(np.array([1, 0]), np.array([0.8, 0.0]), np.array([1.0, 1.0]), portfolio,
                                    validation_hit_rate=None)
    assert sizes.tolist() == pytest.approx([0.2, 0.0])


def test_ml_predicted_exit_widens_with_confidence():
    scales = backtest.exit_scales(ExitRuleType.ML_PREDICTED, np.ones(2), np.array([0.6, 0.9]), 0.6)
    assert scales.tolist() == pytest.approx([1.0, 1.5])


def test_signal_target_goes_short_on_sell():
    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.2, 0.7], [0.4, 0.3, 0.3]])
    direction, confidence = backtest.signals(probabilities, ["BUY", "HOLD", "SELL"], PredictionTarget.SIGNAL, 0.6)
    assert direction.tolist() == [1, -1, 0]
    assert confidence.tolist() == pytest.approx([0.7, 0.7, 0.0])


def test_price_direction_never_goes_short():
    probabilities = np.array([[0.9, 0.1], [0.3, 0.7]])
    direction, _ = backtest.signals(probabilities, ["0", "1"], PredictionTarget.PRICE_DIRECTION, 0.6)
    assert direction.tolist() == [0, 1]


def test_volatility_target_has_no_signal():
    with pytest.raises(ValueError, match="VOLATILITY"):
        backtest.signals(np.array([[0.5, 0.5]]), ["0", "1"], PredictionTarget.VOLATILITY, 0.6)


def test_bars_per_year_comes_from_timestamps():
    timestamps = np.arange("2020-01-01", "2021-01-01", dtype="datetime64[D]")
    assert backtest.bars_per_year(timestamps, 1440) == pytest.approx(365 * 365.25 / 365, rel=1e-3)
