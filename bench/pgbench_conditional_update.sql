-- The least a lock-based design must do per order: one conditional update of the hot row.
UPDATE lockbench_stock SET reserved = reserved + 1 WHERE sku = 'HOT' AND on_hand - reserved >= 1;
