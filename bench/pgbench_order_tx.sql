-- The lock-based design in one transaction: take a unit of the hot SKU under its row
-- lock, then write the order, its line and two audit events. Used by bench/limits.py.
BEGIN;
UPDATE lockbench_stock SET reserved = reserved + 1, version = version + 1, updated_at = now()
  WHERE sku = 'HOT' AND on_hand - reserved >= 1;
INSERT INTO lockbench_orders (order_id, user_id, status, total, created_at, updated_at)
  VALUES (gen_random_uuid(), 'user-' || :client_id, 'CONFIRMED', 4999, now(), now())
  RETURNING order_id \gset
INSERT INTO lockbench_order_lines (order_id, sku, quantity, unit_price) VALUES (:order_id, 'HOT', 1, 4999);
INSERT INTO lockbench_order_events (order_id, seq, type, data, at) VALUES
  (:order_id, 1, 'OrderPlaced', '{"lines":[{"sku":"HOT","quantity":1}]}', now()),
  (:order_id, 2, 'OrderStatusChanged', '{"to":"CONFIRMED"}', now());
COMMIT;
