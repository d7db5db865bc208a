-- The model table's rule that a CHECK cannot state. (Re-applied by `alicode-gw migrate`
-- on every run: CREATE OR REPLACE only.)

-- check_alias: an alias must point at a priced model (one level), and a priced model that
-- aliases point at cannot itself become an alias.
CREATE OR REPLACE FUNCTION billing.check_alias() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.alias_of IS NOT NULL THEN
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
