-- Scheduler clusters and seed peer clusters, and which seed peer clusters serve which
-- scheduler clusters. Configs are JSON text, as Dragonfly stores them.
CREATE TABLE scheduler_clusters (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    bio TEXT NOT NULL DEFAULT '',
    config TEXT NOT NULL DEFAULT '{}',
    client_config TEXT NOT NULL DEFAULT '{}',
    seed_client_config TEXT NOT NULL DEFAULT '{}',
    scopes TEXT NOT NULL DEFAULT '{}',
    is_default BIGINT NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

CREATE TABLE seed_peer_clusters (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    bio TEXT NOT NULL DEFAULT '',
    config TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

CREATE TABLE seed_peer_cluster_scheduler_clusters (
    seed_peer_cluster_id BIGINT NOT NULL REFERENCES seed_peer_clusters (id) ON DELETE CASCADE,
    scheduler_cluster_id BIGINT NOT NULL REFERENCES scheduler_clusters (id) ON DELETE CASCADE,
    PRIMARY KEY (seed_peer_cluster_id, scheduler_cluster_id)
);
