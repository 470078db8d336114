//! Job routes (`/api/v1/jobs` for console sessions, `/oapi/v1/jobs` for personal access
//! tokens with scope `job`), as Dragonfly's manager serves them to Harbor.

use super::*;
use crate::jobs;

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/jobs", post(create_job).get(list_jobs))
        .route(
            "/jobs/{id}",
            get(get_job).patch(update_job).delete(delete_job),
        )
}

/// A job id in a path: a positive integer (else 422, as Dragonfly binds it).
fn job_id(
    p: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<i64, ApiError> {
    let Path(raw) = p.map_err(|e| ApiError::bad(e.body_text()))?;
    match raw.parse::<i64>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(ApiError::bad(format!("id: {raw:?} is not a job id"))),
    }
}

async fn create_job(
    State(s): State<Arc<AppState>>,
    axum::Extension(c): axum::Extension<Claims>,
    JsonBody(mut req): JsonBody<jobs::CreateJob>,
) -> Result<Response, ApiError> {
    // Jobs make every node download or delete: root's (as Dragonfly's roles have it), and the
    // job is recorded as the caller's.
    require_root(&c)?;
    req.user_id = None;
    match s.runner.create(req, c.id).await {
        Ok(job) => Ok(Json(job).into_response()),
        // Dragonfly answers a job rate limit in plain text.
        Err(r) if r.status == 429 => Ok((StatusCode::TOO_MANY_REQUESTS, r.message).into_response()),
        Err(r) => Err(ApiError(
            StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            r.message,
        )),
    }
}

#[derive(Deserialize)]
struct JobQuery {
    #[serde(rename = "type")]
    kind: Option<String>,
    state: Option<String>,
    user_id: Option<i64>,
    page: Option<i64>,
    per_page: Option<i64>,
}

async fn list_jobs(
    State(s): State<Arc<AppState>>,
    q: Result<Query<JobQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad(e.body_text()))?;
    let (page, per_page, offset) = page_of(q.page, q.per_page)?;
    if let Some(st) = &q.state {
        if !["PENDING", "SUCCESS", "FAILURE"].contains(&st.as_str()) {
            return Err(ApiError::bad(format!(
                "state: {st:?} is not PENDING, SUCCESS or FAILURE"
            )));
        }
    }
    let f = jobs::JobFilter {
        kind: q.kind.clone(),
        state: q.state.clone(),
        user_id: q.user_id,
    };
    let (list, total) = jobs::list(&s.db, &f, per_page, offset).await?;
    let mut kept = Vec::new();
    if let Some(k) = q.kind {
        kept.push(("type".to_string(), k));
    }
    if let Some(st) = q.state {
        kept.push(("state".to_string(), st));
    }
    if let Some(u) = q.user_id {
        kept.push(("user_id".to_string(), u.to_string()));
    }
    let link = link_header("/oapi/v1/jobs", kept, page, per_page, total);
    Ok(([(header::LINK, link)], Json(list)).into_response())
}

async fn get_job(
    State(s): State<Arc<AppState>>,
    p: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Json<jobs::Job>, ApiError> {
    let id = job_id(p)?;
    jobs::job(&s.db, id)
        .await?
        .map(Json)
        .ok_or_else(ApiError::not_found)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateJob {
    bio: Option<String>,
    #[allow(dead_code)]
    user_id: Option<i64>,
}

async fn update_job(
    State(s): State<Arc<AppState>>,
    axum::Extension(c): axum::Extension<Claims>,
    p: Result<Path<String>, axum::extract::rejection::PathRejection>,
    JsonBody(req): JsonBody<UpdateJob>,
) -> Result<Json<jobs::Job>, ApiError> {
    require_root(&c)?;
    let id = job_id(p)?;
    if let Some(bio) = &req.bio {
        if bio.len() > 1024 {
            return Err(ApiError::bad("bio: at most 1024 characters"));
        }
        if !jobs::update_bio(&s.db, id, bio).await? {
            return Err(ApiError::not_found());
        }
    }
    jobs::job(&s.db, id)
        .await?
        .map(Json)
        .ok_or_else(ApiError::not_found)
}

async fn delete_job(
    State(s): State<Arc<AppState>>,
    axum::Extension(c): axum::Extension<Claims>,
    p: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<StatusCode, ApiError> {
    require_root(&c)?;
    let id = job_id(p)?;
    s.runner.stop(id);
    if jobs::delete(&s.db, id).await? {
        Ok(StatusCode::OK)
    } else {
        Err(ApiError::not_found())
    }
}
