//! The shared store's vocabularies: what ccgate was doing in Redis when it failed, why it
//! connected afresh, and which outside input it discarded.

use super::label_enum;

label_enum! {
    /// What ccgate was doing in Redis when it failed; the `op` label of
    /// `ccgate_store_errors_total`.
    StoreOp {
        Connect => "connect",
        Read => "read",
        Write => "write",
        Lease => "lease",
        Limit => "limit",
        Events => "events",
        Subscribe => "subscribe",
        Webhooks => "webhooks",
    }
}

label_enum! {
    /// Why ccgate dropped its Redis connection and connected afresh (issue 35); the `reason`
    /// label of `ccgate_store_reconnects_total`: `readonly` (the node was demoted: a managed
    /// failover), `loading` (it restarted and loads its data), `masterdown` (a replica that
    /// lost its primary), `noscript` (a script vanished even after loading it: the name leads
    /// to several nodes), `clusterdown` (a cluster that stayed down), `connection_lost`
    /// (reset, refused or closed), `timeouts` (commands timed out in a row), `switch_master`
    /// (a sentinel announced a new primary).
    StoreReconnect {
        ReadOnly => "readonly",
        Loading => "loading",
        MasterDown => "masterdown",
        NoScript => "noscript",
        ClusterDown => "clusterdown",
        ConnectionLost => "connection_lost",
        Timeouts => "timeouts",
        SwitchMaster => "switch_master",
    }
}

label_enum! {
    /// Input from the gateway or the shared store that ccgate discarded to keep its bounds or
    /// because it was not valid; the `what` label of `ccgate_input_discarded_total`:
    /// `gateway_cookie` (a `Set-Cookie` past the session's jar bounds), `store_agent_id` (an
    /// agent id in Redis that is not a work number), `store_record` (a session record with a
    /// field that fails validation), `store_event` (a stream entry that fails validation),
    /// `pending_event` (recorded while Redis was away, dropped from the full pending queue),
    /// `journal_entry` (an agent's ending that did not reach the journal in Redis, or an
    /// entry read from it that fails validation).
    Discarded {
        GatewayCookie => "gateway_cookie",
        StoreAgentId => "store_agent_id",
        StoreRecord => "store_record",
        StoreEvent => "store_event",
        PendingEvent => "pending_event",
        JournalEntry => "journal_entry",
    }
}
