-- The model table's rule that a CHECK cannot state. (Re-applied by `alicode-gw migrate`
-- on every run: CREATE OR REPLACE only.)

-- check_alias: an alias must point at a priced model (one level, never a family), and a
-- priced model that aliases point at cannot itself become an alias.
CREATE OR REPLACE FUNCTION billing.check_alias() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.alias_of IS NOT NULL THEN
        IF right(NEW.alias_of, 1) = '*' THEN
            RAISE EXCEPTION 'model % is a family; point % at a priced model id',
                NEW.alias_of, NEW.id USING ERRCODE = 'check_violation';
        END IF;
        IF EXISTS (SELECT 1 FROM models m WHERE m.id = NEW.alias_of AND m.alias_of IS NOT NULL)
        THEN
            RAISE EXCEPTION 'model % is itself an alias; point % at a priced model',
                NEW.alias_of, NEW.id USING ERRCODE = 'check_violation';
        END IF;
        IF EXISTS (SELECT 1 FROM models m WHERE m.alias_of = NEW.id) THEN
            RAISE EXCEPTION 'model % has aliases pointing at it and cannot become an alias',
                NEW.id USING ERRCODE = 'check_violation';
        END IF;
    END IF;
    RETURN NEW;
END $$;

CREATE OR REPLACE TRIGGER models_check_alias BEFORE INSERT OR UPDATE ON models
    FOR EACH ROW EXECUTE FUNCTION billing.check_alias();

-- resolve_model: the priced row a client's model id is billed as (an alias followed to
-- its target): the exact id, else a dated snapshot `<base>-YYYYMMDD` as its base id,
-- else the family (`<prefix>*`) with the longest prefix of the id. No row: the id is
-- not served. The same rule as alicode_gw/money/catalog.py's resolve.
CREATE OR REPLACE FUNCTION billing.resolve_model(p_name text) RETURNS SETOF models
LANGUAGE sql STABLE AS $$
    SELECT t.*
      FROM (SELECT a.id, a.alias_of, 1 AS rank, 0 AS len
              FROM models a
             WHERE a.id = p_name AND position('*' IN p_name) = 0
            UNION ALL
            SELECT a.id, a.alias_of, 2, 0
              FROM models a
             WHERE p_name ~ '-[0-9]{8}$' AND a.id = left(p_name, -9)
               AND position('*' IN p_name) = 0
            UNION ALL
            SELECT f.id, NULL, 3, length(f.id)
              FROM models f
             WHERE right(f.id, 1) = '*' AND position('*' IN p_name) = 0
               AND left(p_name, length(f.id) - 1) = left(f.id, -1)) c
      JOIN models t ON t.id = coalesce(c.alias_of, c.id)
     ORDER BY c.rank, c.len DESC
     LIMIT 1
$$;
