"""A small demo Sensor Application: busbar voltage and transformer top-oil temperature.

The values follow a fixed daily shape (a sine over the UTC day, no randomness), so a run is
reproducible: the voltage sags in the evening peak and the top-oil temperature lags the load.
It stands in for the substation simulator app until that exists; it is for ``gridhub demo``.

Configuration (ContainerConfig): ``interval`` seconds between readings (default 5).
Outputs (Scalar Objects, 9.1): ``sensor/data/<IID>/busbar/voltage/L1`` in volts and
``sensor/data/<IID>/transformer/temperature/top-oil`` in degrees Celsius.
"""

from __future__ import annotations

import math
from typing import Any

from gridhub.sdk import App, ConfigurationError, now

DAY = 86_400
VOLTAGE_TOPIC = "busbar/voltage/L1"
TOP_OIL_TOPIC = "transformer/temperature/top-oil"


def busbar_voltage(timestamp: int) -> float:
    """Return the phase voltage in volts: 240 V at night, down to 232 V at the 18:00 peak."""
    phase = 2 * math.pi * ((timestamp % DAY) / DAY - 0.5)  # 0 at 12:00, evening peak at 18:00
    return round(236.0 - 4.0 * math.sin(phase), 2)


def top_oil_temperature(timestamp: int) -> float:
    """Return the top-oil temperature in degrees Celsius: 35 at dawn, 55 around 20:00."""
    phase = 2 * math.pi * ((timestamp % DAY) / DAY - 0.583)  # 14:00 zero crossing, peak near 20:00
    return round(45.0 + 10.0 * math.sin(phase), 2)


class DemoSensor(App):
    """Publish the two demo readings every ``interval`` seconds."""

    role = "sensor"

    def __init__(self) -> None:
        super().__init__()
        self.interval = 5.0

    def configure(self, config: dict[str, Any]) -> None:
        """Read ``interval`` (seconds, > 0)."""
        interval = config.get("interval", 5.0)
        if isinstance(interval, bool) or not isinstance(interval, int | float) or interval <= 0:
            raise ConfigurationError(f"interval: expected a positive number of seconds, got {interval!r}")
        self.interval = float(interval)

    def start(self) -> None:
        """Start publishing readings."""
        self.every(self.interval, self.publish_readings)

    def publish_readings(self) -> None:
        """Publish one voltage and one temperature reading stamped now."""
        timestamp = now()
        self.publish_scalar(VOLTAGE_TOPIC, busbar_voltage(timestamp), timestamp=timestamp)
        self.publish_scalar(TOP_OIL_TOPIC, top_oil_temperature(timestamp), timestamp=timestamp)


if __name__ == "__main__":
    DemoSensor.main()
