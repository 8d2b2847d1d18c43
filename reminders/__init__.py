"""Reminders: appointment reminders, check-in schedules and watchdogs on APScheduler.

Jobs live in the `scheduler_jobs` table (APScheduler's SQLAlchemyJobStore) in the same database,
carry only ids, and call `ConversationService.start_flow`; every message then takes the outbox
road. Exactly one process schedules (see `reminders.lock`); `reminders.runtime.Reminders` runs it.
"""
