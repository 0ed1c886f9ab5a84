//! Timers: hello deadline, retries, WebSocket pings, sleep for UDP wakeup.

use super::*;

impl Shard {
    pub fn on_tick(&mut self, now_ms: Millis) {
        while let Some(&(deadline, timer)) = self.timers.first() {
            if deadline > now_ms {
                break;
            }
            self.timers.pop_first();
            match timer {
                Timer::HelloDeadline(conn) => {
                    if self
                        .conns
                        .get(&conn)
                        .is_some_and(|state| state.uaid.is_none())
                    {
                        self.close(conn, close::PROTOCOL_ERROR, "no hello in time");
                    }
                }
                Timer::Retry(conn) => {
                    let Some(state) = self.conns.get_mut(&conn) else {
                        continue;
                    };
                    state.retry_at_ms = 0;
                    if let Some(uaid) = state.uaid {
                        self.deliver_pending(now_ms, conn, uaid);
                    }
                }
                Timer::SleepIdle(conn) => self.on_sleep_idle(now_ms, conn),
                Timer::WsPing(conn) => {
                    if self.conns.contains_key(&conn) {
                        self.actions.push_back(Action::WsPing { conn });
                        self.schedule_ws_ping(now_ms, conn);
                    }
                }
            }
        }
    }

    /// SPEC §5: a wakeup-registered UA with nothing in flight is closed with
    /// 4774 once idle, so its radio can sleep; otherwise look again later.
    pub(super) fn on_sleep_idle(&mut self, now_ms: Millis, conn: ConnId) {
        let Some(state) = self.conns.get(&conn) else {
            return;
        };
        let Some(uaid) = state.uaid else { return };
        let idle_since = state.last_activity_ms;
        let idle_ms = self.config.limits.wakeup_idle_ms;
        let Some(ua) = self.uas.get(&uaid) else {
            return;
        };
        if ua.wakeup.is_none() || ua.conn != Some(conn) {
            return;
        }
        let quiet = now_ms.saturating_sub(idle_since) >= idle_ms;
        let unacked = ua.pending.values().any(|pending| pending.sent);
        if quiet && !unacked {
            self.close(conn, close::SLEEP, "sleep: you will be woken by UDP");
        } else {
            let next = if quiet {
                now_ms + idle_ms
            } else {
                idle_since + idle_ms
            };
            self.timers.insert((next, Timer::SleepIdle(conn)));
        }
    }
}
