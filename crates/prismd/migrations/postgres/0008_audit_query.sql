-- The audit query (`Store::audit_events_page`: GraphQL `auditEvents`, `prismd audit --org`)
-- reads one organization's events newest first by id, in keyset pages. (org_id, at) orders
-- them by time, which ids need not follow exactly; this index serves the order and the
-- cursor directly, so a page reads only its own rows.
CREATE INDEX audit_events_org_id ON audit_events (org_id, id);
