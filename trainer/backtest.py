"""Strategy metrics: the model's signals traded over the test period.

The execution model is deliberately simple, so that its numbers compare
models rather than predict live results:

* One instrument and at most one position at a time.  A decision is taken at
  the close of a bar from that bar's prediction and filled at the same close.
  Decisions are taken every Rebalance Frequency (converted to bars, at least one).
* Signals: long where the probability of the up class (UP, BUY, 1, ...)
  reaches the confidence threshold.  SIGNAL targets also go short where the
  probability of SELL reaches it.  Otherwise the position is flat.  A VOLATILITY target has no
  direction to trade, so it gets no strategy metrics.
* Position size, as a fraction of equity held through the trade:
  FIXED is Max Position Size; KELLY is ``p - (1 - p) / b`` from the hit rate
  ``p`` of the signals on the validation rows and the payoff ratio
  ``b = take profit / stop loss`` (1 without risk management), capped by Max
  Position Size; VOLATILITY scales Max Position Size by the trailing median of
  realised volatility over its current value, never above Max Position Size;
  ML_BASED is Max Position Size x confidence x ML Signal Weight.
* Stop loss and take profit (when Risk Management is on) are checked against
  each later bar's low and high.  When both are touched in one bar the stop
  is assumed to come first; when the bar opens beyond a level the fill is the
  open.  FIXED uses the sheet's percentage; ADAPTIVE scales it by the current
  over the trailing median realised volatility (clipped to 0.5-2x);
  ML_PREDICTED scales it by confidence over the threshold (at most 2x).
* Every position change pays Transaction Cost (basis points of the traded
  fraction).  Equity below ``1 - Max Drawdown`` of its peak closes the position
  and stops trading; a day's loss beyond Max Daily Loss closes it and blocks
  entries for the rest of that day.  A position still open at the end is
  closed at the last close.
* Returns compound per bar on the fraction held; no slippage, borrow cost,
  funding or partial fills.  The Sharpe ratio is annualised with the number
  of bars per year observed in the timestamps and assumes a zero risk-free rate.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from quanttrain.trainer.config import ExitRuleType, PortfolioSettings, PositionSizing, PredictionTarget
from quanttrain.trainer.summary import StrategyMetrics

# Class labels read as "go long" and "go short", compared case-insensitively.
LONG_LABELS = ("up", "buy", "long", "1", "+1", "true")
SHORT_LABELS = ("sell", "short", "-1")
# Bars in the realised-volatility window and in the trailing median it is compared with.
VOLATILITY_WINDOW = 20
VOLATILITY_MEDIAN_WINDOW = 252
# Limits on how far ADAPTIVE and ML_PREDICTED may move an exit level from the sheet's value.
MIN_EXIT_SCALE = 0.5
MAX_EXIT_SCALE = 2.0
DAYS_PER_YEAR = 365.25


@dataclasses.dataclass(frozen=True)
class PricePath:
    """Bars of the test period, oldest first."""

    close: np.ndarray
    high: np.ndarray
    low: np.ndarray
    open: np.ndarray | None = None
    timestamps: np.ndarray | None = None  # datetime64 values; needed for the daily loss limit


@dataclasses.dataclass(frozen=True)
class Trade:
    direction: int
    size: float
    entry_index: int
    exit_index: int
    entry_price: float
    exit_price: float
    net_return: float  # change of equity over the trade, costs included
    exit_reason: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class BacktestResult:
    metrics: StrategyMetrics
    equity: np.ndarray
    trades: list[Trade]
    halted_at: int | None  # bar where the drawdown limit stopped trading

    def to_dict(self) -> dict[str, Any]:
        return {
            "metrics": self.metrics.to_spec(),
            "trades": [trade.to_dict() for trade in self.trades],
            "haltedAt": self.halted_at,
        }


@dataclasses.dataclass
class _Position:
    direction: int
    size: float
    entry_index: int
    entry_price: float
    equity_before: float
    stop_price: float | None
    take_price: float | None


def _find_class(classes: list[str], labels: tuple[str, ...]) -> int | None:
    for index, name in enumerate(classes):
        if str(name).strip().casefold() in labels:
            return index
    return None


def signals(
    probabilities: np.ndarray, classes: list[str], target: PredictionTarget, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Compute the direction (+1, 0, -1) and confidence of each row's signal.

    Raises ValueError for a VOLATILITY target, which has no direction.
    """
    if target is PredictionTarget.VOLATILITY:
        raise ValueError("a VOLATILITY target predicts no direction, so it has no trading signal")
    long_index = _find_class(classes, LONG_LABELS)
    if long_index is None and len(classes) == 2:
        long_index = 1  # the positive class of a binary target
    if long_index is None:
        raise ValueError(f"no class of {classes} means 'up'; name one of {', '.join(LONG_LABELS)}")

    long_probability = probabilities[:, long_index]
    direction = np.where(long_probability >= threshold, 1, 0)
    confidence = np.where(direction == 1, long_probability, 0.0)
    short_index = _find_class(classes, SHORT_LABELS) if target is PredictionTarget.SIGNAL else None
    if short_index is not None:
        short_probability = probabilities[:, short_index]
        short = (short_probability >= threshold) & (short_probability > long_probability)
        direction = np.where(short, -1, direction)
        confidence = np.where(short, short_probability, confidence)
    return direction.astype(np.int8), confidence


def signal_hit_rate(
    probabilities: np.ndarray, y: np.ndarray, classes: list[str], target: PredictionTarget, threshold: float
) -> float | None:
    """Return the fraction of acted-on signals whose class was right, or None when no signal fired."""
    direction, _ = signals(probabilities, classes, target, threshold)
    acted = direction != 0
    if not acted.any():
        return None
    predicted = probabilities.argmax(axis=1)
    return float((predicted[acted] == np.asarray(y)[acted]).mean())


def bars_per_year(timestamps: np.ndarray | None, interval_minutes: float) -> float:
    """Count bars per year in the timestamps, or derive it from the interval (round-the-clock trading) without them."""
    if timestamps is not None and len(timestamps) > 1:
        span = (np.datetime64(timestamps[-1]) - np.datetime64(timestamps[0])) / np.timedelta64(1, "D")
        if span > 0:
            return float((len(timestamps) - 1) * DAYS_PER_YEAR / span)
    return DAYS_PER_YEAR * 1440.0 / interval_minutes


def realised_volatility(close: np.ndarray, window: int = VOLATILITY_WINDOW) -> tuple[np.ndarray, np.ndarray]:
    """Compute the trailing volatility of close-to-close returns and its trailing median from past bars only."""
    import pandas as pd

    returns = pd.Series(close, dtype=float).pct_change()
    volatility = returns.rolling(window, min_periods=2).std()
    median = volatility.rolling(VOLATILITY_MEDIAN_WINDOW, min_periods=1).median()
    return volatility.to_numpy(), median.to_numpy()


def position_sizes(
    direction: np.ndarray,
    confidence: np.ndarray,
    close: np.ndarray,
    portfolio: PortfolioSettings,
    *,
    validation_hit_rate: float | None,
) -> np.ndarray:
    """Compute the size of the position each row's signal would open, as a fraction of equity."""
    cap = portfolio.max_position_size
    method = portfolio.position_sizing
    if method is PositionSizing.FIXED:
        sizes = np.full(direction.shape, cap)
    elif method is PositionSizing.KELLY:
        p = 0.5 if validation_hit_rate is None else validation_hit_rate
        payoff = portfolio.take_profit_pct / portfolio.stop_loss_pct if portfolio.risk_management else 1.0
        sizes = np.full(direction.shape, float(np.clip(p - (1 - p) / payoff, 0.0, cap)))
    elif method is PositionSizing.VOLATILITY:
        volatility, median = realised_volatility(close)
        ratio = np.divide(median, volatility, out=np.ones_like(volatility), where=volatility > 0)
        sizes = cap * np.clip(np.nan_to_num(ratio, nan=1.0), 0.0, 1.0)
    else:
        sizes = cap * confidence * portfolio.ml_signal_weight
    return np.where(direction != 0, sizes, 0.0)


def exit_scales(
    rule: ExitRuleType, close: np.ndarray, confidence: np.ndarray, threshold: float
) -> np.ndarray:
    """Compute the multiplier on the sheet's stop loss or take profit distance for a position opened at each row."""
    if rule is ExitRuleType.FIXED:
        return np.ones(close.shape)
    if rule is ExitRuleType.ADAPTIVE:
        volatility, median = realised_volatility(close)
        scale = np.divide(volatility, median, out=np.ones_like(volatility), where=median > 0)
        scale = np.nan_to_num(scale, nan=1.0)
    else:
        # NOTE: no separate model predicts exit levels, so the signal's confidence scales them.
        scale = np.maximum(confidence, threshold) / threshold
    return np.clip(scale, MIN_EXIT_SCALE, MAX_EXIT_SCALE)


def rebalance_bars(portfolio: PortfolioSettings, interval_minutes: float) -> int:
    return max(1, round(portfolio.rebalance_frequency_hours * 60 / interval_minutes))


class _Simulation:
    """The bar loop; its state is one equity value and at most one open position."""

    def __init__(self, path: PricePath, portfolio: PortfolioSettings) -> None:
        # Python lists: indexing them per bar is several times faster than numpy arrays.
        self.closes = path.close.tolist()
        self.highs = path.high.tolist()
        self.lows = path.low.tolist()
        self.open_prices = path.open.tolist() if path.open is not None else None
        self.portfolio = portfolio
        self.cost_rate = portfolio.risk.transaction_cost_bps / 10_000
        self.equity = 1.0
        self.peak = 1.0
        self.position: _Position | None = None
        self.trades: list[Trade] = []

    def open(self, t: int, direction: int, size: float, stop_scale: float, take_scale: float) -> None:
        price = self.closes[t]
        stop = take = None
        if self.portfolio.risk_management:
            stop = price * (1 - direction * self.portfolio.stop_loss_pct * stop_scale)
            take = price * (1 + direction * self.portfolio.take_profit_pct * take_scale)
        equity_before = self.equity
        self.equity *= 1 - self.cost_rate * size
        self.position = _Position(direction, size, t, price, equity_before, stop, take)

    def close(self, t: int, price: float, reason: str) -> None:
        position = self.position
        self.equity *= 1 - self.cost_rate * position.size
        self.trades.append(Trade(
            direction=position.direction, size=position.size, entry_index=position.entry_index, exit_index=t,
            entry_price=position.entry_price, exit_price=float(price),
            net_return=self.equity / position.equity_before - 1, exit_reason=reason,
        ))
        self.position = None

    def hold(self, t: int) -> None:
        """Carry the open position through bar ``t``, closing it at a stop or target touched inside the bar."""
        position = self.position
        exit_price, reason = self._exit_level(position, t)
        price = exit_price if exit_price is not None else self.closes[t]
        self.equity *= 1 + position.direction * position.size * (price / self.closes[t - 1] - 1)
        if reason is not None:
            self.close(t, price, reason)

    def _exit_level(self, position: _Position, t: int) -> tuple[float | None, str | None]:
        if position.stop_price is None:
            return None, None
        high, low = self.highs[t], self.lows[t]
        bar_open = self.open_prices[t] if self.open_prices is not None else None
        adverse, favourable = (low, high) if position.direction > 0 else (high, low)
        # A worse open than the level fills at the open (a gap through the stop),
        # and a better open than the target fills at the open too.
        if (adverse - position.stop_price) * position.direction <= 0:
            fill = position.stop_price if bar_open is None else _worse(position.direction, position.stop_price, bar_open)
            return fill, "stop loss"
        if (favourable - position.take_price) * position.direction >= 0:
            fill = position.take_price if bar_open is None else _better(position.direction, position.take_price, bar_open)
            return fill, "take profit"
        return None, None


def _worse(direction: int, level: float, bar_open: float) -> float:
    return min(level, bar_open) if direction > 0 else max(level, bar_open)


def _better(direction: int, level: float, bar_open: float) -> float:
    return max(level, bar_open) if direction > 0 else min(level, bar_open)


def backtest(
    path: PricePath,
    direction: np.ndarray,
    confidence: np.ndarray,
    portfolio: PortfolioSettings,
    *,
    threshold: float,
    interval_minutes: float,
    validation_hit_rate: float | None = None,
) -> BacktestResult:
    """Trade ``direction`` (+1, 0, -1 per bar) over ``path`` with the portfolio's sizing and risk rules."""
    n = len(path.close)
    sizes = position_sizes(direction, confidence, path.close, portfolio, validation_hit_rate=validation_hit_rate)
    stop_scales = exit_scales(portfolio.stop_loss_type, path.close, confidence, threshold)
    take_scales = exit_scales(portfolio.take_profit_type, path.close, confidence, threshold)
    every = rebalance_bars(portfolio, interval_minutes)
    days = path.timestamps.astype("datetime64[D]").astype(np.int64).tolist() if path.timestamps is not None else None
    direction, sizes = direction.tolist(), sizes.tolist()
    stop_scales, take_scales = stop_scales.tolist(), take_scales.tolist()
    close = path.close.tolist()

    simulation = _Simulation(path, portfolio)
    risk = portfolio.risk
    equity = np.empty(n)
    halted_at: int | None = None
    day_start_equity, blocked_day = 1.0, None
    for t in range(n):
        if days is not None and (t == 0 or days[t] != days[t - 1]):
            day_start_equity = simulation.equity
        if t > 0 and simulation.position is not None:
            simulation.hold(t)
        simulation.peak = max(simulation.peak, simulation.equity)

        if portfolio.risk_management and halted_at is None:
            if simulation.equity <= simulation.peak * (1 - risk.max_drawdown):
                if simulation.position is not None:
                    simulation.close(t, close[t], "max drawdown")
                halted_at = t
            elif days is not None and simulation.equity <= day_start_equity * (1 - risk.max_daily_loss):
                if simulation.position is not None:
                    simulation.close(t, close[t], "max daily loss")
                blocked_day = days[t]

        can_trade = halted_at is None and t < n - 1 and t % every == 0
        if can_trade and not (days is not None and blocked_day == days[t]):
            signal = direction[t]
            if simulation.position is not None and simulation.position.direction != signal:
                simulation.close(t, close[t], "signal")
            if signal != 0 and simulation.position is None and sizes[t] > 0:
                simulation.open(t, signal, sizes[t], stop_scales[t], take_scales[t])
        equity[t] = simulation.equity

    if simulation.position is not None:
        simulation.close(n - 1, close[n - 1], "end of test")
        equity[n - 1] = simulation.equity
    return BacktestResult(
        metrics=_metrics(equity, simulation.trades, bars_per_year(path.timestamps, interval_minutes)),
        equity=equity,
        trades=simulation.trades,
        halted_at=halted_at,
    )


def _metrics(equity: np.ndarray, trades: list[Trade], annual_bars: float) -> StrategyMetrics:
    if equity.size == 0:
        return StrategyMetrics(total_return=0.0, sharpe_ratio=0.0, max_drawdown=0.0, hit_rate=0.0, trades=0)
    returns = np.diff(equity, prepend=1.0) / np.concatenate(([1.0], equity[:-1]))
    deviation = returns.std()
    sharpe = float(returns.mean() / deviation * np.sqrt(annual_bars)) if deviation > 0 else 0.0
    drawdown = 1 - equity / np.maximum.accumulate(np.maximum(equity, 1.0))
    wins = sum(trade.net_return > 0 for trade in trades)
    return StrategyMetrics(
        total_return=float(equity[-1] - 1),
        sharpe_ratio=sharpe,
        max_drawdown=float(drawdown.max()),
        hit_rate=wins / len(trades) if trades else 0.0,
        trades=len(trades),
    )
