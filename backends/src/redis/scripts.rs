//! The Lua scripts, each prefixed with `scripts/common.lua`. `redis::Script` runs them with
//! EVALSHA and loads them again when the server lost them (a restart).

use std::sync::LazyLock;

use redis::Script;

macro_rules! script {
    ($file:literal) => {
        Script::new(concat!(
            include_str!("scripts/common.lua"),
            "\n",
            include_str!(concat!("scripts/", $file))
        ))
    };
}

pub(crate) struct Scripts {
    pub publish: Script,
    pub lease: Script,
    pub settle: Script,
    pub heartbeat: Script,
    pub reap: Script,
    pub live: Script,
    pub requeue: Script,
    pub expedite: Script,
    pub stats: Script,
    pub archived: Script,
}

pub(crate) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    publish: script!("publish.lua"),
    lease: script!("lease.lua"),
    settle: script!("settle.lua"),
    heartbeat: script!("heartbeat.lua"),
    reap: script!("reap.lua"),
    live: script!("live.lua"),
    requeue: script!("requeue.lua"),
    expedite: script!("expedite.lua"),
    stats: script!("stats.lua"),
    archived: script!("archived.lua"),
});
