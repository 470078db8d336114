-- Schedulers and seed peers as they register (UpdateScheduler / UpdateSeedPeer) and keep
-- alive (KeepAlive: state active while the stream is open), preheat jobs with their
-- per-host results, and the audit log of REST and Open API writes.
CREATE TABLE schedulers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    hostname TEXT NOT NULL,
    idc TEXT NOT NULL DEFAULT '',
    location TEXT NOT NULL DEFAULT '',
    ip TEXT NOT NULL,
    port INTEGER NOT NULL,
    state TEXT NOT NULL DEFAULT 'inactive' CHECK (state IN ('active', 'inactive')),
    features TEXT NOT NULL DEFAULT '["schedule","preheat"]',
    scheduler_cluster_id INTEGER NOT NULL REFERENCES scheduler_clusters (id) ON DELETE CASCADE,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    UNIQUE (hostname, ip, scheduler_cluster_id)
);

CREATE TABLE seed_peers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    hostname TEXT NOT NULL,
    type TEXT NOT NULL DEFAULT 'super',
    idc TEXT NOT NULL DEFAULT '',
    location TEXT NOT NULL DEFAULT '',
    ip TEXT NOT NULL,
    port INTEGER NOT NULL,
    download_port INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'inactive' CHECK (state IN ('active', 'inactive')),
    seed_peer_cluster_id INTEGER NOT NULL REFERENCES seed_peer_clusters (id) ON DELETE CASCADE,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    UNIQUE (hostname, ip, seed_peer_cluster_id)
);

CREATE TABLE jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id TEXT NOT NULL,
    bio TEXT NOT NULL DEFAULT '',
    type TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('PENDING', 'SUCCESS', 'FAILURE')),
    args TEXT NOT NULL DEFAULT '{}',
    result TEXT NOT NULL DEFAULT '{}',
    -- What the job does once resolved (tasks, headers, per-cluster scheduler choice): kept so
    -- a restarted manager resumes the job without resolving the image again.
    plan TEXT NOT NULL DEFAULT '{}',
    user_id INTEGER NOT NULL DEFAULT 0,
    scheduler_cluster_ids TEXT NOT NULL DEFAULT '[]',
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX jobs_state ON jobs (state);

CREATE TABLE audits (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    actor_type TEXT NOT NULL,
    actor_name TEXT NOT NULL,
    event TEXT NOT NULL,
    operation TEXT NOT NULL,
    path TEXT NOT NULL,
    status_code INTEGER NOT NULL,
    state TEXT NOT NULL,
    created_at TEXT NOT NULL
);
