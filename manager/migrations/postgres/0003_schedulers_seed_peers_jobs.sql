-- Schedulers and seed peers as they register (UpdateScheduler / UpdateSeedPeer) and keep
-- alive (KeepAlive: state active while the stream is open), preheat jobs with their
-- per-host results, and the audit log of REST and Open API writes.
CREATE TABLE schedulers (
    id BIGSERIAL PRIMARY KEY,
    hostname TEXT NOT NULL,
    idc TEXT NOT NULL DEFAULT '',
    location TEXT NOT NULL DEFAULT '',
    ip TEXT NOT NULL,
    port BIGINT NOT NULL,
    state TEXT NOT NULL DEFAULT 'inactive' CHECK (state IN ('active', 'inactive')),
    features TEXT NOT NULL DEFAULT '["schedule","preheat"]',
    scheduler_cluster_id BIGINT NOT NULL REFERENCES scheduler_clusters (id) ON DELETE CASCADE,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    UNIQUE (hostname, ip, scheduler_cluster_id)
);

CREATE TABLE seed_peers (
    id BIGSERIAL PRIMARY KEY,
    hostname TEXT NOT NULL,
    type TEXT NOT NULL DEFAULT 'super',
    idc TEXT NOT NULL DEFAULT '',
    location TEXT NOT NULL DEFAULT '',
    ip TEXT NOT NULL,
    port BIGINT NOT NULL,
    download_port BIGINT NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'inactive' CHECK (state IN ('active', 'inactive')),
    seed_peer_cluster_id BIGINT NOT NULL REFERENCES seed_peer_clusters (id) ON DELETE CASCADE,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    UNIQUE (hostname, ip, seed_peer_cluster_id)
);

CREATE TABLE jobs (
    id BIGSERIAL PRIMARY KEY,
    task_id TEXT NOT NULL,
    bio TEXT NOT NULL DEFAULT '',
    type TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('PENDING', 'SUCCESS', 'FAILURE')),
    args TEXT NOT NULL DEFAULT '{}',
    result TEXT NOT NULL DEFAULT '{}',
    -- What the job does once resolved (tasks, headers, per-cluster scheduler choice): kept so
    -- a restarted manager resumes the job without resolving the image again.
    plan TEXT NOT NULL DEFAULT '{}',
    user_id BIGINT NOT NULL DEFAULT 0,
    scheduler_cluster_ids TEXT NOT NULL DEFAULT '[]',
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX jobs_state ON jobs (state);

CREATE TABLE audits (
    id BIGSERIAL PRIMARY KEY,
    actor_type TEXT NOT NULL,
    actor_name TEXT NOT NULL,
    event TEXT NOT NULL,
    operation TEXT NOT NULL,
    path TEXT NOT NULL,
    status_code BIGINT NOT NULL,
    state TEXT NOT NULL,
    created_at TEXT NOT NULL
);
