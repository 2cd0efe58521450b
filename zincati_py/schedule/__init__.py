"""Cron schedules as systemd calendar events.

:func:`translate` turns a cron expression (croniter's dialect) into ``OnCalendar=`` values;
:mod:`zincati_py.schedule.preview` asks systemd when those values elapse. Importing this
package is cheap (croniter and zoneinfo load on first use): the generator imports it on every
boot.
"""

from zincati_py.schedule.cron import CronError, translate, validate_time_zone

__all__ = ["CronError", "translate", "validate_time_zone"]
