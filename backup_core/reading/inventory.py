"""What a database holds: exact or estimated row counts and an inventory of schema objects.

The same queries describe a source at backup time and a restored copy during a drill, so the
two can be compared name for name.
"""

from __future__ import annotations

import hashlib
import queue
import re
import threading
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import psycopg
from psycopg import sql

from backup_core.store.manifest import Inventory, Manifest

_SYSTEM = "('pg_catalog', 'information_schema', 'pg_toast')"
_NOT_SYSTEM = f"n.nspname NOT IN {_SYSTEM} AND n.nspname NOT LIKE 'pg\\_temp\\_%' " \
    "AND n.nspname NOT LIKE 'pg\\_toast\\_temp\\_%'"
_NOT_EXTENSION_MEMBER = (
    "NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = {cat}::regclass "
    "AND d.objid = {oid} AND d.deptype = 'e')"
)

TABLES_SQL = f"""
SELECT n.nspname, c.relname, c.reltuples::bigint
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND {_NOT_SYSTEM}
  AND {_NOT_EXTENSION_MEMBER.format(cat="'pg_class'", oid="c.oid")}
ORDER BY c.relpages DESC, 1, 2
"""

INVENTORY_SQL: dict[str, str] = {
    "tables": f"""
        SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p', 'f') AND {_NOT_SYSTEM}
          AND {_NOT_EXTENSION_MEMBER.format(cat="'pg_class'", oid="c.oid")}""",
    "views": f"""
        SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('v', 'm') AND {_NOT_SYSTEM}
          AND {_NOT_EXTENSION_MEMBER.format(cat="'pg_class'", oid="c.oid")}""",
    "indexes": f"""
        SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('i', 'I') AND {_NOT_SYSTEM}
          AND NOT EXISTS (SELECT 1 FROM pg_index v WHERE v.indexrelid = c.oid
                          AND NOT v.indisvalid)  -- pg_dump leaves invalid indexes out
          AND NOT EXISTS (SELECT 1 FROM pg_depend d JOIN pg_index x ON x.indexrelid = c.oid
                          WHERE d.objid = x.indrelid AND d.classid = 'pg_class'::regclass
                          AND d.deptype = 'e')""",
    "sequences": f"""
        SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind = 'S' AND {_NOT_SYSTEM}
          AND {_NOT_EXTENSION_MEMBER.format(cat="'pg_class'", oid="c.oid")}""",
    "functions": f"""
        SELECT n.nspname, p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')'
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE {_NOT_SYSTEM}
          AND {_NOT_EXTENSION_MEMBER.format(cat="'pg_proc'", oid="p.oid")}""",
    "constraints": f"""
        SELECT n.nspname, c.relname || '.' || k.conname
        FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE k.contype IN ('p', 'u', 'f', 'c', 'x') AND {_NOT_SYSTEM}
          AND {_NOT_EXTENSION_MEMBER.format(cat="'pg_class'", oid="c.oid")}""",
    "extensions": """
        SELECT n.nspname, e.extname FROM pg_extension e
        JOIN pg_namespace n ON n.oid = e.extnamespace
        WHERE e.extname <> 'plpgsql'""",
}

# checksum: exact counts plus an order-independent checksum of every table's content, in one
# pass; exact: counts only; estimate: planner statistics; off: nothing.
ROW_COUNT_MODES = ("checksum", "exact", "estimate", "off")
# A row's text form depends on these settings; the backup and the drill both fix them, so the
# same data gives the same checksum whatever the server's or the role's defaults.
STABLE_OUTPUT = {"TimeZone": "UTC", "DateStyle": "ISO, YMD", "IntervalStyle": "postgres",
                 "extra_float_digits": "3", "bytea_output": "hex", "lc_monetary": "C",
                 "search_path": "pg_catalog"}  # names in deparsed definitions: all qualified

# grants in a stable order: a restore may grant them in another
_ACL = "('{{' || (SELECT string_agg(a::text, ',' ORDER BY a::text) FROM unnest({col}) a) || '}}')"
_OBJ = "quote_ident(n.nspname) || '.' || quote_ident(c.relname)"
_KIND = ("CASE c.relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'table' WHEN 'v' THEN 'view' "
         "WHEN 'm' THEN 'materialized view' WHEN 'S' THEN 'sequence' "
         "WHEN 'f' THEN 'foreign table' ELSE c.relkind::text END")
# What each object is, as text a person can compare (long bodies as md5): the drill checks
# the restored copy against this, so a changed type, default or grant is named, not missed.
DEFINITIONS_SQL: dict[str, str] = {
    "column": f"""
        SELECT {_OBJ} || '.' || quote_ident(a.attname),
               format_type(a.atttypid, a.atttypmod)
               || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
               || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
               || CASE WHEN a.attcollation <> 0 AND a.attcollation <> t.typcollation
                       THEN ' collate ' || quote_ident(co.collname) ELSE '' END
               || CASE a.attidentity WHEN 'a' THEN ' generated always as identity'
                                     WHEN 'd' THEN ' generated by default as identity'
                                     ELSE '' END
               || CASE a.attgenerated WHEN 's' THEN ' generated stored' ELSE '' END
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_type t ON t.oid = a.atttypid
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        LEFT JOIN pg_collation co ON co.oid = a.attcollation
        WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
          AND {_NOT_SYSTEM} AND {_NOT_EXTENSION_MEMBER.format(cat="'pg_class'", oid="c.oid")}""",
    "constraint": f"""
        SELECT {_OBJ} || '.' || quote_ident(k.conname), pg_get_constraintdef(k.oid)
        FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE {_NOT_SYSTEM} AND {_NOT_EXTENSION_MEMBER.format(cat="'pg_class'", oid="c.oid")}""",
    "index": f"""
        SELECT {_OBJ}, pg_get_indexdef(c.oid)
        FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE x.indisvalid AND {_NOT_SYSTEM}
          AND {_NOT_EXTENSION_MEMBER.format(cat="'pg_class'", oid="x.indrelid")}""",
    "trigger": f"""
        SELECT {_OBJ} || '.' || quote_ident(g.tgname), pg_get_triggerdef(g.oid)
        FROM pg_trigger g JOIN pg_class c ON c.oid = g.tgrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE NOT g.tgisinternal AND {_NOT_SYSTEM}""",
    "view": f"""
        SELECT {_OBJ}, pg_get_viewdef(c.oid)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('v', 'm') AND {_NOT_SYSTEM}
          AND {_NOT_EXTENSION_MEMBER.format(cat="'pg_class'", oid="c.oid")}""",
    "function": f"""
        SELECT quote_ident(n.nspname) || '.' || quote_ident(p.proname) || '('
               || pg_get_function_identity_arguments(p.oid) || ')',
               pg_get_functiondef(p.oid)
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE p.prokind IN ('f', 'p', 'w') AND {_NOT_SYSTEM}
          AND {_NOT_EXTENSION_MEMBER.format(cat="'pg_proc'", oid="p.oid")}""",
    "sequence": f"""
        SELECT {_OBJ}, format_type(s.seqtypid, NULL) || ' increment ' || s.seqincrement
               || ' from ' || s.seqmin || ' to ' || s.seqmax
               || CASE WHEN s.seqcycle THEN ' cycle' ELSE '' END
        FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE {_NOT_SYSTEM} AND {_NOT_EXTENSION_MEMBER.format(cat="'pg_class'", oid="c.oid")}""",
    "type": f"""
        SELECT quote_ident(n.nspname) || '.' || quote_ident(t.typname),
               CASE t.typtype
                 WHEN 'e' THEN 'enum (' || (SELECT string_agg(quote_literal(e.enumlabel), ', '
                                            ORDER BY e.enumsortorder) FROM pg_enum e
                                            WHERE e.enumtypid = t.oid) || ')'
                 WHEN 'd' THEN 'domain ' || format_type(t.typbasetype, t.typtypmod)
                 ELSE 'type ' || t.typtype::text END
        FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
        WHERE t.typtype IN ('e', 'd', 'c', 'r') AND t.typrelid = 0 AND {_NOT_SYSTEM}
          AND {_NOT_EXTENSION_MEMBER.format(cat="'pg_type'", oid="t.oid")}""",
    "extension": """
        SELECT quote_ident(e.extname), 'version ' || e.extversion FROM pg_extension e
        WHERE e.extname <> 'plpgsql'""",
    "owner": f"""
        SELECT {_KIND} || ' ' || {_OBJ}, pg_get_userbyid(c.relowner)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND {_NOT_SYSTEM}
          AND {_NOT_EXTENSION_MEMBER.format(cat="'pg_class'", oid="c.oid")}
        UNION ALL
        SELECT 'schema ' || quote_ident(n.nspname), pg_get_userbyid(n.nspowner)
        FROM pg_namespace n WHERE {_NOT_SYSTEM} AND n.nspname <> 'public'""",
    "privileges": f"""
        SELECT {_KIND} || ' ' || {_OBJ}, {_ACL.format(col="c.relacl")}
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relacl IS NOT NULL AND {_NOT_SYSTEM}
          AND {_NOT_EXTENSION_MEMBER.format(cat="'pg_class'", oid="c.oid")}
        UNION ALL
        SELECT 'schema ' || quote_ident(n.nspname), {_ACL.format(col="n.nspacl")}
        FROM pg_namespace n WHERE n.nspacl IS NOT NULL AND {_NOT_SYSTEM}""",
}
_NOT_BUILTIN = "{oid} >= 16384"  # FirstNormalObjectId: created after initdb
_ROLE = "CASE {r} WHEN 0 THEN 'public' ELSE quote_ident(pg_get_userbyid({r})) END"
# option lists with the values of anything that may be a secret masked: a manifest holds none
_OPTIONS = ("coalesce((SELECT string_agg(CASE WHEN split_part(o, '=', 1) "
            "~* '(pass|secret|key|token)' THEN split_part(o, '=', 1) || '=***' ELSE o END, "
            "', ' ORDER BY o) FROM unnest({col}) o), '')")
# The object classes past tables and functions, each read from its own catalog: what an
# application relies on without naming it (a policy, a publication, a comment) and what
# decides how text behaves (collations, text search).
DEFINITIONS_SQL.update({
    "policy": f"""
        SELECT {_OBJ} || '.' || quote_ident(p.polname),
               CASE WHEN p.polpermissive THEN 'permissive' ELSE 'restrictive' END || ' for '
               || CASE p.polcmd WHEN 'r' THEN 'select' WHEN 'a' THEN 'insert'
                                WHEN 'w' THEN 'update' WHEN 'd' THEN 'delete' ELSE 'all' END
               || ' to ' || (SELECT string_agg(x.name, ', ' ORDER BY x.name) FROM
                             (SELECT {_ROLE.format(r="r")} AS name FROM unnest(p.polroles) r) x)
               || coalesce(' using (' || pg_get_expr(p.polqual, p.polrelid) || ')', '')
               || coalesce(' with check (' || pg_get_expr(p.polwithcheck, p.polrelid) || ')',
                           '')
        FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {_NOT_SYSTEM}""",
    "row_security": f"""
        SELECT {_OBJ}, CASE WHEN c.relrowsecurity THEN 'on' ELSE 'off' END
                       || CASE WHEN c.relforcerowsecurity THEN ', forced' ELSE '' END
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p') AND {_NOT_SYSTEM}
          AND {_NOT_EXTENSION_MEMBER.format(cat="'pg_class'", oid="c.oid")}""",
    "matview": f"""
        SELECT {_OBJ}, CASE WHEN c.relispopulated THEN 'populated'
                            ELSE 'not populated (WITH NO DATA)' END
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind = 'm' AND {_NOT_SYSTEM}
          AND {_NOT_EXTENSION_MEMBER.format(cat="'pg_class'", oid="c.oid")}""",
    "rule": f"""
        SELECT quote_ident(r.schemaname) || '.' || quote_ident(r.tablename) || '.'
               || quote_ident(r.rulename), r.definition
        FROM pg_rules r JOIN pg_namespace n ON n.nspname = r.schemaname
        WHERE {_NOT_SYSTEM}""",
    "statistics": f"""
        SELECT quote_ident(n.nspname) || '.' || quote_ident(s.stxname),
               pg_get_statisticsobjdef(s.oid)
        FROM pg_statistic_ext s JOIN pg_namespace n ON n.oid = s.stxnamespace
        WHERE {_NOT_SYSTEM}
          AND {_NOT_EXTENSION_MEMBER.format(cat="'pg_statistic_ext'", oid="s.oid")}""",
    "publication": """
        SELECT quote_ident(p.pubname),
               CASE WHEN p.puballtables THEN 'all tables' ELSE 'tables ' || coalesce(
                   (SELECT string_agg(r.prrelid::regclass::text, ', '
                                      ORDER BY r.prrelid::regclass::text)
                    FROM pg_publication_rel r WHERE r.prpubid = p.oid), '-') END
               || ' publish ' || concat_ws(', ', CASE WHEN p.pubinsert THEN 'insert' END,
                                           CASE WHEN p.pubupdate THEN 'update' END,
                                           CASE WHEN p.pubdelete THEN 'delete' END,
                                           CASE WHEN p.pubtruncate THEN 'truncate' END)
               || CASE WHEN p.pubviaroot THEN ' via root' ELSE '' END
        FROM pg_publication p""",
    "event_trigger": """
        SELECT quote_ident(e.evtname),
               'on ' || e.evtevent || ' execute ' || e.evtfoid::regprocedure::text
               || ' enabled ' || e.evtenabled::text
               || coalesce(' when tag in (' || array_to_string(e.evttags, ', ') || ')', '')
        FROM pg_event_trigger e
        WHERE NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_event_trigger'::regclass
                          AND d.objid = e.oid AND d.deptype = 'e')""",
    "default_acl": f"""
        SELECT {_ROLE.format(r="a.defaclrole")} || coalesce(' in ' || quote_ident(n.nspname), '')
               || ' on ' || CASE a.defaclobjtype WHEN 'r' THEN 'tables'
                                 WHEN 'S' THEN 'sequences' WHEN 'f' THEN 'functions'
                                 WHEN 'T' THEN 'types' WHEN 'n' THEN 'schemas'
                                 ELSE a.defaclobjtype::text END,
               {_ACL.format(col="a.defaclacl")}
        FROM pg_default_acl a LEFT JOIN pg_namespace n ON n.oid = a.defaclnamespace""",
    "cast": f"""
        SELECT '(' || format_type(k.castsource, NULL) || ' as '
               || format_type(k.casttarget, NULL) || ')',
               CASE k.castmethod WHEN 'f' THEN 'function ' || k.castfunc::regprocedure::text
                                 WHEN 'b' THEN 'binary' ELSE 'inout' END
               || CASE k.castcontext WHEN 'e' THEN '' WHEN 'a' THEN ' as assignment'
                                     ELSE ' as implicit' END
        FROM pg_cast k WHERE {_NOT_BUILTIN.format(oid="k.oid")}
          AND {_NOT_EXTENSION_MEMBER.format(cat="'pg_cast'", oid="k.oid")}""",
    "collation": f"""
        SELECT quote_ident(n.nspname) || '.' || quote_ident(co.collname),
               'provider ' || CASE co.collprovider WHEN 'c' THEN 'libc' WHEN 'i' THEN 'icu'
                                   WHEN 'b' THEN 'builtin' ELSE co.collprovider::text END
               || coalesce(' collate ' || (to_jsonb(co) ->> 'collcollate'), '')
               || coalesce(' ctype ' || (to_jsonb(co) ->> 'collctype'), '')
               || coalesce(' locale ' || coalesce(to_jsonb(co) ->> 'colllocale',
                                                  to_jsonb(co) ->> 'colliculocale'), '')
               || coalesce(' rules ' || (to_jsonb(co) ->> 'collicurules'), '')
               || CASE WHEN co.collisdeterministic THEN '' ELSE ' nondeterministic' END
        FROM pg_collation co JOIN pg_namespace n ON n.oid = co.collnamespace
        WHERE {_NOT_SYSTEM}
          AND {_NOT_EXTENSION_MEMBER.format(cat="'pg_collation'", oid="co.oid")}""",
    "ts_config": f"""
        SELECT quote_ident(n.nspname) || '.' || quote_ident(t.cfgname),
               'parser ' || (SELECT quote_ident(pn.nspname) || '.' || quote_ident(p.prsname)
                             FROM pg_ts_parser p JOIN pg_namespace pn
                             ON pn.oid = p.prsnamespace WHERE p.oid = t.cfgparser)
               || ' mapping md5 ' || md5(coalesce((SELECT string_agg(
                      m.maptokentype || ':' || m.mapseqno || ':' || m.mapdict::regdictionary,
                      ' ' ORDER BY m.maptokentype, m.mapseqno)
                   FROM pg_ts_config_map m WHERE m.mapcfg = t.oid), ''))
        FROM pg_ts_config t JOIN pg_namespace n ON n.oid = t.cfgnamespace
        WHERE {_NOT_SYSTEM}
          AND {_NOT_EXTENSION_MEMBER.format(cat="'pg_ts_config'", oid="t.oid")}""",
    "ts_dictionary": f"""
        SELECT quote_ident(n.nspname) || '.' || quote_ident(t.dictname),
               'template ' || (SELECT quote_ident(tn.nspname) || '.' || quote_ident(m.tmplname)
                               FROM pg_ts_template m JOIN pg_namespace tn
                               ON tn.oid = m.tmplnamespace WHERE m.oid = t.dicttemplate)
               || coalesce(' options ' || t.dictinitoption, '')
        FROM pg_ts_dict t JOIN pg_namespace n ON n.oid = t.dictnamespace
        WHERE {_NOT_SYSTEM}
          AND {_NOT_EXTENSION_MEMBER.format(cat="'pg_ts_dict'", oid="t.oid")}""",
    "ts_parser": f"""
        SELECT quote_ident(n.nspname) || '.' || quote_ident(p.prsname),
               concat_ws(' ', p.prsstart::regproc, p.prstoken::regproc, p.prsend::regproc,
                         p.prslextype::regproc, p.prsheadline::regproc)
        FROM pg_ts_parser p JOIN pg_namespace n ON n.oid = p.prsnamespace
        WHERE {_NOT_SYSTEM}
          AND {_NOT_EXTENSION_MEMBER.format(cat="'pg_ts_parser'", oid="p.oid")}""",
    "ts_template": f"""
        SELECT quote_ident(n.nspname) || '.' || quote_ident(t.tmplname),
               concat_ws(' ', t.tmplinit::regproc, t.tmpllexize::regproc)
        FROM pg_ts_template t JOIN pg_namespace n ON n.oid = t.tmplnamespace
        WHERE {_NOT_SYSTEM}
          AND {_NOT_EXTENSION_MEMBER.format(cat="'pg_ts_template'", oid="t.oid")}""",
    "foreign_data_wrapper": f"""
        SELECT quote_ident(w.fdwname),
               'handler ' || coalesce(nullif(w.fdwhandler, 0)::regproc::text, '-')
               || ' validator ' || coalesce(nullif(w.fdwvalidator, 0)::regproc::text, '-')
               || ' options ' || {_OPTIONS.format(col="w.fdwoptions")}
        FROM pg_foreign_data_wrapper w
        WHERE {_NOT_EXTENSION_MEMBER.format(cat="'pg_foreign_data_wrapper'", oid="w.oid")}""",
    "foreign_server": f"""
        SELECT quote_ident(s.srvname),
               'wrapper ' || quote_ident(w.fdwname) || coalesce(' type ' || s.srvtype, '')
               || coalesce(' version ' || s.srvversion, '')
               || ' options ' || {_OPTIONS.format(col="s.srvoptions")}
        FROM pg_foreign_server s JOIN pg_foreign_data_wrapper w ON w.oid = s.srvfdw
        WHERE {_NOT_EXTENSION_MEMBER.format(cat="'pg_foreign_server'", oid="s.oid")}""",
    "user_mapping": """
        SELECT quote_ident(u.usename) || ' server ' || quote_ident(u.srvname), 'exists'
        FROM pg_user_mappings u""",
    "security_label": """
        SELECT l.objtype || ' ' || l.objname || ' provider ' || l.provider, l.label
        FROM pg_seclabels l WHERE l.objtype NOT IN ('database', 'role', 'tablespace')""",
    "comment": f"""
        SELECT o.type || ' ' || o.identity, d.description
        FROM pg_description d, pg_identify_object(d.classoid, d.objoid, d.objsubid) o
        WHERE {_NOT_BUILTIN.format(oid="d.objoid")}
          AND coalesce(o.schema, '') NOT IN {_SYSTEM}
          AND NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = d.classoid
                          AND e.objid = d.objoid AND e.deptype = 'e')""",
})
# Large objects: how many, who may read them, and (when contents are checksummed) a checksum
# of every object's bytes bound to its OID; one aggregate each, not one line per object.
LARGE_OBJECTS_SQL = """
    SELECT count(*)::text,
           md5(coalesce(string_agg(m.oid::text || ' ' || pg_get_userbyid(m.lomowner) || ' '
                                   || coalesce(m.lomacl::text, ''), ';' ORDER BY m.oid), ''))
    FROM pg_largeobject_metadata m"""
LARGE_OBJECT_CONTENT_SQL = """
    SELECT coalesce(sum(hashtextextended(md5(lo_get(m.oid)), m.oid::bigint)), 0)::text
    FROM pg_largeobject_metadata m"""
# Kinds that only mean something when the copy was restored with owners and grants.
OWNERSHIP_KINDS = ("owner", "privileges", "default_acl", "user_mapping", "large_object_acl")
# Kinds whose text a server deparses: comparable only between servers of one major.
DEPARSED_KINDS = ("constraint", "index", "trigger", "view", "function", "extension", "policy",
                  "rule", "statistics")
# Kinds whose long texts are kept as an md5 (bodies, free text).
LONG_AS_MD5 = (*(k for k in DEPARSED_KINDS if k != "extension"), "comment", "security_label")
# Kinds holding an ACL: a restore may grant in another order than production did.
ACL_KINDS = ("privileges", "default_acl")
# Facts of the database itself, not an object in it: compared by the sandbox locale check.
DATABASE_KIND = "database"


def comparable(key: str, value: str) -> str:
    """A recorded definition in the form both sides compare in: an ACL's grants sorted (a
    manifest by an older atb kept them in production's order)."""
    if key.split(" ", 1)[0] in ACL_KINDS and value.startswith("{") and value.endswith("}"):
        return "{" + ",".join(sorted(value[1:-1].split(","))) + "}"
    return value


def qualified(schema: str, name: str) -> str:
    return f"{schema}.{name}"


def user_tables(conn: psycopg.Connection[Any]) -> list[tuple[str, str, int]]:
    """(schema, table, estimated rows), largest first so parallel counting balances."""
    return [(s, t, int(r)) for s, t, r in conn.execute(TABLES_SQL).fetchall()]


def _rows_of(conn: psycopg.Connection[Any], queries: list[str]) -> list[list[Any]]:
    """Each query's rows, the queries sent together (one pipeline, where libpq has them): a
    catalog read is some forty small queries, and one at a time each waits on the server,
    then on the client, on a machine the restore's aftermath keeps busy."""
    if not psycopg.Pipeline.is_supported():
        return [conn.execute(q).fetchall() for q in queries]
    with conn.pipeline():
        cursors = [conn.execute(q) for q in queries]
    return [c.fetchall() for c in cursors]


def _inventory_of(rows: list[list[Any]]) -> Inventory:
    """`INVENTORY_SQL`'s rows, kind by kind, as an inventory."""
    inv: Inventory = {}
    for kind, found in zip(INVENTORY_SQL, rows, strict=True):
        for schema, name in found:
            inv.setdefault(schema, {}).setdefault(kind, []).append(name)
    for kinds in inv.values():
        for names in kinds.values():
            names.sort()
    return dict(sorted(inv.items()))


def schema_inventory(conn: psycopg.Connection[Any]) -> Inventory:
    return _inventory_of(_rows_of(conn, list(INVENTORY_SQL.values())))


_CAST = re.compile(
    r"::(?:\"[^\"]+\"|[A-Za-z_][\w.]*)"
    r"(?:\s+(?:varying|precision|with(?:out)?\s+time\s+zone))?(?:\(\d+(?:,\s*\d+)?\))?(?:\[\])*")
_ATOM_IN_PARENS = re.compile(r"\(\s*((?:'(?:[^']|'')*'|[\w.\"]+|ARRAY\[[^\[\]]*\]))\s*\)")


def normalise(definition: str) -> str:
    """A deparsed expression in a form that survives a dump and reload: PostgreSQL moves casts
    and parentheses when it parses its own output again (`x IN ('a', 'b')` on a varchar
    column), so casts are dropped and parentheses around a single term removed. Types are
    compared on the columns themselves."""
    text = _CAST.sub("", definition)
    while True:
        shorter = _ATOM_IN_PARENS.sub(r"\1", text)
        if shorter == text:
            return " ".join(text.split())
        text = shorter


# Security labels are read through `pg_seclabels`, a view over a dozen catalogs whose
# planning alone costs more than every other class together: read only where one exists
_LABELLED_SQL = ("SELECT EXISTS (SELECT 1 FROM pg_seclabel) "
                 "OR EXISTS (SELECT 1 FROM pg_shseclabel)")
_LABELLED, _LARGE, _LOCALE = "+labelled", "+large objects", "+locale"


def _definition_plan(kinds: Collection[str] | None) -> list[tuple[str, str]]:
    """(kind or step, query) of the definitions of `kinds` (None: every kind), to send at
    once; the database's locale always."""
    def wanted(*names: str) -> bool:
        return kinds is None or any(n in kinds for n in names)

    plan = [(k, q) for k, q in DEFINITIONS_SQL.items() if k != "security_label" and wanted(k)]
    if wanted("security_label"):
        plan.append((_LABELLED, _LABELLED_SQL))
    if wanted("large_object", "large_object_acl"):
        plan.append((_LARGE, LARGE_OBJECTS_SQL))
    return [*plan, (_LOCALE, DATABASE_SQL)]


def _definitions_of(conn: psycopg.Connection[Any], plan: list[tuple[str, str]],
                    rows: list[list[Any]], *, content: bool) -> dict[str, str]:
    """The rows of `_definition_plan`'s queries as definitions; what they say exists
    (security labels, large objects' content) read after them."""
    by_kind: list[tuple[str, list[Any]]] = []
    found: dict[str, str] = {}
    for (step, _), got in zip(plan, rows, strict=True):
        if step == _LABELLED:
            if got and got[0][0]:
                by_kind.append(("security_label", conn.execute(
                    DEFINITIONS_SQL["security_label"]).fetchall()))
        elif step == _LARGE:
            if got and got[0][0] != "0":
                found["large_object count"] = str(got[0][0])
                found["large_object_acl all"] = f"md5 {got[0][1]}"
                if content:
                    summed = conn.execute(LARGE_OBJECT_CONTENT_SQL).fetchone()
                    found["large_object content"] = f"checksum {summed[0] if summed else 0}"
        elif step == _LOCALE:
            found.update(_locale_of(got[0]).as_definitions())
        else:
            by_kind.append((step, got))
    for kind, named in by_kind:
        for name, definition in named:
            text = str(definition)
            if kind in DEPARSED_KINDS and kind != "extension":
                text = normalise(text)
            if kind in LONG_AS_MD5 and len(text) > 200:
                text = "md5 " + hashlib.md5(text.encode()).hexdigest()
            found[f"{kind} {name}"] = text
    return dict(sorted(found.items()))


# Every kind `definitions` reads (large objects as their count, content and ACL; the
# database's locale): recorded in the manifest, so a drill compares these kinds both ways,
# those production had no object of too.
DEFINITION_KINDS = (*DEFINITIONS_SQL, "large_object", "large_object_acl", DATABASE_KIND)


# Extensions atb's own tools add to a sandbox (`pg_amcheck --install-missing`, run beside
# the read-back): the extension and its comment in the copy are the drill's, never
# production's objects; their members are extension members, read by no kind.
TOOL_EXTENSIONS = ("amcheck",)
# What every new database has from initdb, read by a kind although built in: the `public`
# schema's grants (production may have dropped the schema; pg_dump never drops it).
_INITDB_KEYS = ("privileges schema public",)


def the_sandboxs_own(key: str) -> bool:
    """Whether definition `key` may be in a copy production never had for no fault of the
    archive: the new database's own (initdb's) or put there by atb's tools."""
    return key in _INITDB_KEYS or any(
        key in (f"extension {e}", f"comment extension {e}") for e in TOOL_EXTENSIONS)


def recorded_kinds(manifest: Manifest | None) -> set[str]:
    """The kinds of definitions a manifest recorded: the kinds its atb read
    (`definition_kinds`), and those of its `"<kind> <object>"` keys (the only ones an older
    atb's manifest names). The only ones a drill compares, so the only ones it reads back.
    A listed kind this atb does not know is left out; a key of such a kind stays, and the
    drill reports it missing, since it cannot read it back (None: none)."""
    if manifest is None:
        return set()
    read = set(manifest.definition_kinds) & set(DEFINITION_KINDS)
    return read | {k.split(" ", 1)[0] for k in manifest.definitions}


def definitions(conn: psycopg.Connection[Any], *, content: bool = False) -> dict[str, str]:
    """`"<kind> <object>"` -> its definition, for every object of the database (run on a
    connection whose output is stabilised, so both sides deparse alike). Deparsed kinds are
    normalised (see `normalise`); long ones are kept as an md5 of that. With `content`, the
    large objects' bytes are checksummed too (they are data: `--row-counts checksum`)."""
    plan = _definition_plan(None)
    return _definitions_of(conn, plan, _rows_of(conn, [q for _, q in plan]), content=content)


def catalogs(conn: psycopg.Connection[Any], *, content: bool = False,
             kinds: Collection[str] | None = None) -> tuple[Inventory, dict[str, str]]:
    """`schema_inventory` and `definitions` at once, their queries in one pipeline. With
    `kinds`, only the definitions of those kinds (and the locale): a drill compares the
    kinds its manifest recorded, and reads nothing it will not compare."""
    plan = _definition_plan(kinds)
    rows = _rows_of(conn, [*INVENTORY_SQL.values(), *(q for _, q in plan)])
    return (_inventory_of(rows[:len(INVENTORY_SQL)]),
            _definitions_of(conn, plan, rows[len(INVENTORY_SQL):], content=content))


# The database's own locale: to_jsonb reads the columns each major has (15: daticulocale,
# 16: daticurules, 17: datlocale), so one query serves every server.
DATABASE_SQL = """
    SELECT pg_encoding_to_char(d.encoding), d.datcollate, d.datctype,
           coalesce(to_jsonb(d) ->> 'datlocprovider', 'c'),
           coalesce(to_jsonb(d) ->> 'datlocale', to_jsonb(d) ->> 'daticulocale', ''),
           coalesce(to_jsonb(d) ->> 'daticurules', '')
    FROM pg_database d WHERE d.datname = current_database()"""
PROVIDERS = {"c": "libc", "i": "icu", "b": "builtin"}


@dataclass(frozen=True)
class DatabaseLocale:
    """How a database stores, sorts and classifies text: what a sandbox must reproduce, or
    indexes on text sort differently and `ORDER BY name` answers otherwise."""

    encoding: str
    collate: str
    ctype: str
    provider: str = "libc"  # libc, icu or builtin
    locale: str = ""  # the ICU (or builtin) locale
    icu_rules: str = ""

    def as_definitions(self) -> dict[str, str]:
        return {f"{DATABASE_KIND} {k}": v for k, v in asdict(self).items()}

    @classmethod
    def from_definitions(cls, defs: dict[str, str]) -> DatabaseLocale | None:
        """The locale a manifest recorded; None in a backup by an older atb."""
        prefix = f"{DATABASE_KIND} "
        found = {k[len(prefix):]: v for k, v in defs.items() if k.startswith(prefix)}
        if not {"encoding", "collate", "ctype"} <= set(found):
            return None
        return cls(**{k: v for k, v in found.items() if k in cls.__dataclass_fields__})

    def describe(self) -> str:
        text = f"{self.encoding}, collate {self.collate}, ctype {self.ctype}, {self.provider}"
        if self.locale:
            text += f" locale {self.locale}"
        return text + (f" rules {self.icu_rules}" if self.icu_rules else "")


def read_locale(conn: psycopg.Connection[Any]) -> DatabaseLocale:
    row = conn.execute(DATABASE_SQL).fetchone()
    assert row is not None  # the current database is always in pg_database
    return _locale_of(row)


def _locale_of(row: Any) -> DatabaseLocale:
    encoding, collate, ctype, provider, locale, rules = (str(v) for v in row)
    return DatabaseLocale(encoding=encoding, collate=collate, ctype=ctype,
                          provider=PROVIDERS.get(provider, provider), locale=locale,
                          icu_rules=rules)


def count_rows(conn: psycopg.Connection[Any], schema: str, table: str) -> int:
    query = sql.SQL("SELECT count(*) FROM ONLY {}.{}").format(
        sql.Identifier(schema), sql.Identifier(table)
    )
    row = conn.execute(query).fetchone()
    return int(row[0]) if row else 0


def stabilise_output(conn: psycopg.Connection[Any]) -> None:
    """Fix the settings a row's text form depends on (run before any transaction starts).
    JIT off too: a checksum is many cheap calls per row, which each parallel worker would
    compile anew on a large table (slower by 0.2-0.7 s on a 1 GB table, measured)."""
    for name, value in STABLE_OUTPUT.items():
        conn.execute(sql.SQL("SET {} TO {}").format(sql.Identifier(name), sql.Literal(value)))
    if conn.info.server_version >= 110000:
        conn.execute("SET jit TO off")


# How a table's content checksum was taken, named in the recorded value so a drill takes it
# the same way: "text" hashes each row's text form (`t::text`; values by an atb before the
# method was named carry no prefix), "typed" hashes each column by its type (see
# `typed_row_hash`), in about half the time and telling apart every value the text form
# does. New backups record "typed"; a manifest's "text" values are still verified.
CHECKSUM_TEXT, CHECKSUM_TYPED = "text", "typed"
_TYPED_PREFIX = "typed:"


def checksum_method(recorded: str) -> str:
    """The method a recorded checksum was taken with."""
    return CHECKSUM_TYPED if recorded.startswith(_TYPED_PREFIX) else CHECKSUM_TEXT


# Built-in types (OIDs fixed across majors) whose own hash function tells apart every value
# their text form does: for these the column is hashed as it is stored, not printed.
_INT4, _INT8, _OID, _BOOL, _TIMESTAMP, _TIMESTAMPTZ, _UUID = 23, 20, 26, 16, 1114, 1184, 2950
_INT2, _NUMERIC, _TEXT, _VARCHAR, _NAME = 21, 1700, 25, 1043, 19
_SEED_STEP = 1 << 20  # column k hashes with seed k * 2**20; a numeric's scale (< 2**14) added
_COLUMNS_OF = """
    SELECT n.nspname, c.relname, a.attname, a.atttypid::bigint,
           t.typtype = 'd' OR EXISTS (SELECT 1 FROM pg_cast k WHERE k.castsource = a.atttypid
                                      AND k.casttarget = 'text'::regtype
                                      AND k.castmethod = 'f')
    FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
    JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE {} AND a.attnum > 0 AND NOT a.attisdropped
    ORDER BY n.nspname, c.relname, a.attnum"""
COLUMNS_SQL = _COLUMNS_OF.format("n.nspname = %s AND c.relname = %s")
# every table's at once: one round trip for a drill's read-back, not one per table
ALL_COLUMNS_SQL = _COLUMNS_OF.format(f"c.relkind = 'r' AND {_NOT_SYSTEM}")
Column = tuple[str, int, bool]  # name, type OID, whether printed through `ROW(x)::text`


def table_columns(conn: psycopg.Connection[Any]) -> dict[str, list[Column]]:
    """Every table's columns in order, as `typed_row_hash` takes them, by qualified name."""
    return _columns_of(conn.execute(ALL_COLUMNS_SQL).fetchall())


def _columns_of(rows: list[Any]) -> dict[str, list[Column]]:
    found: dict[str, list[Column]] = {}
    for schema, table, name, oid, via_row in rows:
        found.setdefault(qualified(schema, table), []).append((str(name), int(oid),
                                                              bool(via_row)))
    return found


def tables_and_columns(conn: psycopg.Connection[Any], *, columns: bool
                       ) -> tuple[list[tuple[str, str]], dict[str, list[Column]]]:
    """Every user table, largest first (`user_tables`), and with `columns` every table's
    columns (`table_columns`), in one round trip."""
    if not columns:
        return [(s, t) for s, t, _ in user_tables(conn)], {}
    tables, found = _rows_of(conn, [TABLES_SQL, ALL_COLUMNS_SQL])
    return [(str(s), str(t)) for s, t, _ in tables], _columns_of(found)


def _column_hash(column: str, type_oid: int, via_row: bool, seed: int) -> sql.Composable:
    """One column's 64-bit hash, NULL for NULL, as the arguments of a `coalesce` (the first
    that is not NULL is the hash: every function here is strict). Exact where the text form
    would be: a numeric's scale is in its seed (1.50 is not 1.5; its hash ignores trailing
    zeros), NaN and infinities by their text (they hash alike, and have no scale), floats
    by their text (-0 hashes as 0), text bytewise (`COLLATE "C"`: a nondeterministic
    collation hashes 'a' as 'A'), and a type whose cast to text is not its output function
    (char(n) drops its padding) or a domain through its output function (`ROW(x)::text`)."""
    col = sql.SQL("t.{}").format(sql.Identifier(column))
    s = sql.Literal(seed)
    if type_oid in (_INT2, _INT4):
        return sql.SQL("hashint4extended({}, {})").format(col, s)
    if type_oid == _INT8:
        return sql.SQL("hashint8extended({}, {})").format(col, s)
    if type_oid == _OID:
        return sql.SQL("hashoidextended({}, {})").format(col, s)
    if type_oid == _BOOL:
        return sql.SQL("hashint4extended({}::int4, {})").format(col, s)
    if type_oid == _TIMESTAMP:
        return sql.SQL("timestamp_hash_extended({}, {})").format(col, s)
    if type_oid == _TIMESTAMPTZ:  # microseconds since 2000 in UTC: one value, one instant
        return sql.SQL("timestamp_hash_extended({} AT TIME ZONE 'UTC', {})").format(col, s)
    if type_oid == _UUID:
        return sql.SQL("uuid_hash_extended({}, {})").format(col, s)
    if type_oid == _NUMERIC:  # NaN and infinities have no scale: the sum is NULL, so text
        return sql.SQL("hash_numeric_extended({c}, {s} + scale({c})), "
                       "hashtextextended({c}::text, {s})").format(c=col, s=s)
    if type_oid in (_TEXT, _VARCHAR, _NAME):
        return sql.SQL('hashtextextended({}::text COLLATE "C", {})').format(col, s)
    text = sql.SQL("ROW({})::text").format(col) if via_row else sql.SQL("{}::text").format(col)
    return sql.SQL('hashtextextended({} COLLATE "C", {})').format(text, s)


def typed_row_hash(columns: list[Column]) -> sql.Composable:
    """A row's 64-bit hash from its columns' (name, type OID, whether printed through
    `ROW(x)::text`): each column hashed with a seed of its position (a value moved to
    another column changes it), NULL as a constant of its own, combined and hashed again
    (two values swapped between rows change the sum)."""
    if not columns:
        return sql.SQL("hashint8extended(0, 0)")
    parts = [sql.SQL("coalesce({}, {})").format(_column_hash(name, oid, via_row,
                                                              (k + 1) * _SEED_STEP),
                                                 sql.Literal(k + 1))
             for k, (name, oid, via_row) in enumerate(columns)]
    return sql.SQL("hashint8extended({}, 0)").format(sql.SQL(" # ").join(parts))


def count_and_checksum(conn: psycopg.Connection[Any], schema: str, table: str, *,
                       method: str = CHECKSUM_TYPED,
                       columns: list[Column] | None = None) -> tuple[int, str]:
    """Rows and the sum of a 64-bit hash of each row (see `CHECKSUM_TYPED`): one scan,
    independent of row order, and changed by any value of any row (a rounded price, a
    flipped flag). A server before PostgreSQL 11 has no extended hashes: rows as text there.
    `columns`: the table's, read before (see `table_columns`); else read here."""
    if conn.info.server_version < 110000:
        method = CHECKSUM_TEXT
    if method == CHECKSUM_TEXT:
        row_hash: sql.Composable = sql.SQL("hashtextextended(t::text, 0)")
    else:
        if columns is None:
            columns = [(str(n), int(o), bool(r)) for _s, _t, n, o, r
                       in conn.execute(COLUMNS_SQL, (schema, table)).fetchall()]
        row_hash = typed_row_hash(columns)
    query = sql.SQL("SELECT count(*), coalesce(sum({}), 0)::text FROM ONLY {}.{} t").format(
        row_hash, sql.Identifier(schema), sql.Identifier(table))
    row = conn.execute(query).fetchone()
    total = str(row[1]) if row else "0"
    return (int(row[0]) if row else 0,
            total if method == CHECKSUM_TEXT else _TYPED_PREFIX + total)


def estimated_counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    return {qualified(s, t): max(r, 0) for s, t, r in user_tables(conn)}


def table_contents(
    tables: list[tuple[str, str]],
    connect: Callable[[], psycopg.Connection[Any]],
    *,
    workers: int,
    checksums: bool,
    methods: Mapping[str, str] | None = None,
    columns: Mapping[str, list[Column]] | None = None,
) -> tuple[dict[str, int], dict[str, str]]:
    """(row counts, content checksums) of every table, over `workers` connections that take
    the next table as they finish one (largest first, as `user_tables` orders them: one
    big table does not leave the others queued behind it on one connection). `connect`
    returns a connection already positioned where they must be taken (for a backup: inside
    a transaction that imported the dump's snapshot) with its output stabilised when
    checksums are wanted. `methods` names a table's checksum method where it is not
    `CHECKSUM_TYPED` (a drill takes each as the backup recorded it); `columns` holds the
    tables' columns when they were read before (`table_columns`)."""
    methods, columns = methods or {}, columns or {}
    if not tables:
        return {}, {}
    workers = max(1, min(workers, len(tables)))
    todo = iter(tables)
    lock = threading.Lock()

    def next_table() -> tuple[str, str] | None:
        with lock:
            return next(todo, None)

    def read(_worker: int) -> dict[str, tuple[int, str]]:
        done: dict[str, tuple[int, str]] = {}
        with connect() as conn:
            while (table := next_table()) is not None:
                s, t = table
                name = qualified(s, t)
                done[name] = (count_and_checksum(conn, s, t,
                                                 method=methods.get(name, CHECKSUM_TYPED),
                                                 columns=columns.get(name))
                              if checksums else (count_rows(conn, s, t), ""))
        return done

    found: dict[str, tuple[int, str]] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for part in pool.map(read, range(workers)):
            found.update(part)
    counts = {k: v[0] for k, v in sorted(found.items())}
    sums = {k: v[1] for k, v in sorted(found.items())} if checksums else {}
    return counts, sums


@dataclass(frozen=True)
class ReadBack:
    """What a restored copy holds, read as the backup recorded it: every table's rows and
    content, the inventory and every definition."""

    counts: dict[str, int]
    checksums: dict[str, str]
    inventory: Inventory
    definitions: dict[str, str]


def read_back(connect: Callable[[], psycopg.Connection[Any]], *, workers: int,
              checksums: bool, methods: Mapping[str, str] | None = None,
              kinds: Collection[str] | None = None) -> ReadBack:
    """Everything a drill compares with the manifest, in the time of the longest part: the
    catalogs (inventory, definitions, large objects) are read on a connection of their own
    while `workers` others count and checksum the tables. `connect` gives a connection
    with its output stabilised (`stabilise_output`); `methods` as for `table_contents`;
    `kinds`, the definitions to read, as for `catalogs`.
    The catalogs' connection first lists the tables and every table's columns (one query),
    so a checksum connection spends no round trip on a table's columns."""
    conn = connect()
    try:
        tables, columns = tables_and_columns(conn, columns=checksums)
    except BaseException:
        conn.close()
        raise

    def described() -> tuple[Inventory, dict[str, str]]:
        with conn:
            return catalogs(conn, content=checksums, kinds=kinds)

    with ThreadPoolExecutor(max_workers=1) as side:
        reading = side.submit(described)
        counts, sums = table_contents(tables, connect, workers=workers, checksums=checksums,
                                      methods=methods, columns=columns)
        inv, defs = reading.result()
    return ReadBack(counts=counts, checksums=sums, inventory=inv, definitions=defs)


# Tables whose rows no later item of a restore can change once their own data item has
# committed: a partition is left out (loaded through its root, `--load-via-partition-root`,
# another partition's item may route rows into it)
_EARLY_TABLES_SQL = f"""
SELECT n.nspname, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND NOT c.relispartition AND {_NOT_SYSTEM}
  AND {_NOT_EXTENSION_MEMBER.format(cat="'pg_class'", oid="c.oid")}
"""


@dataclass(frozen=True)
class _Item:
    schema: str
    table: str
    late: bool = False  # put after the restore: read whatever the table is
    columns: list[Column] | None = None


# The sessions one of `pids` holds up: waiting for a lock it holds (or waits for ahead)
_HELD_UP_SQL = """
    SELECT DISTINCT b FROM pg_locks l, unnest(pg_blocking_pids(l.pid)) b
    WHERE NOT l.granted AND b = ANY(%s)"""
WATCH_S = 0.02  # how often a read under way during the restore looks for sessions it holds


class ReadAsLoaded:
    """The read-back of every table's rows and content started while the copy restores:
    each table is read as soon as the restore reports its data committed (`loaded`), on
    one of `workers` connections kept for the whole read-back; `finish`, after the restore,
    reads the rest (tables never reported, partitions, any read that gave way) and the
    catalogs, and gives the same `ReadBack` as `read_back` would then.

    The restore is never held up by a read: each table is read in a transaction of its own,
    committed at once (a read holds one table's lock, and waits on nothing of the
    restore's but that table: no cycle, no deadlock), and a read under way that another
    session waits for (pg_restore's `ALTER TABLE ... ADD CONSTRAINT` wants the table alone)
    gives way: a watcher on a connection of its own sees it within `WATCH_S`, cancels the
    read, and the table is read after the restore. A table read early whose columns differ
    from the restored copy's at the end is read again."""

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]], *, workers: int,
                 checksums: bool, methods: Mapping[str, str] | None = None,
                 kinds: Collection[str] | None = None) -> None:
        self._connect, self._checksums, self._kinds = connect, checksums, kinds
        self._methods = dict(methods or {})
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._lock, self._plan_lock = threading.Lock(), threading.Lock()
        self._plan: tuple[set[str], dict[str, list[Column]]] | None = None
        self._asked: set[str] = set()
        self._done: dict[str, tuple[int, str, list[Column] | None]] = {}
        self._errors: list[BaseException] = []
        self._reading: dict[int, psycopg.Connection[Any]] = {}  # backend pid -> early read
        self._stopped = threading.Event()  # the restore is over: reads no longer give way
        self._watch_conn: psycopg.Connection[Any] | None = None
        self.early: list[str] = []  # the tables read while the restore went on, in order
        self.gave_way: list[str] = []  # early reads cancelled: they held up the restore
        self._threads = [threading.Thread(target=self._work, name=f"atb-read-{k}",
                                          daemon=True) for k in range(max(1, workers))]
        self._watcher = threading.Thread(target=self._watch, name="atb-read-watch",
                                         daemon=True)
        for thread in [*self._threads, self._watcher]:
            thread.start()

    def loaded(self, schema: str, table: str) -> None:
        """The table's data has committed: read it (returns at once)."""
        name = qualified(schema, table)
        with self._lock:
            if name in self._asked:
                return
            self._asked.add(name)
        self._queue.put(_Item(schema, table))

    def _work(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        try:
            while (item := self._queue.get()) is not None:
                if conn is None:
                    conn = self._connect()
                self._read(conn, item)
        except BaseException as exc:  # raised by `finish`
            with self._lock:
                self._errors.append(exc)
        finally:
            if conn is not None:
                conn.close()

    def _watch(self) -> None:
        """While the restore runs: cancel every early read that holds up another session."""
        try:
            while not self._stopped.wait(WATCH_S):
                with self._lock:
                    reading = dict(self._reading)
                if reading:
                    if self._watch_conn is None:
                        self._watch_conn = self._connect()
                        self._watch_conn.autocommit = True
                    rows = self._watch_conn.execute(_HELD_UP_SQL, (list(reading),)).fetchall()
                    for (pid,) in rows:
                        if pid in reading:
                            reading[pid].cancel()
        except BaseException as exc:  # raised by `finish`
            with self._lock:
                self._errors.append(exc)

    def _planned(self, conn: psycopg.Connection[Any]) -> tuple[set[str], dict[str, list[Column]]]:
        """The tables that may be read early and every table's columns, read once, at the
        first report (every table exists by then: pre-data is restored before any data)."""
        with self._plan_lock:
            if self._plan is None:
                early = {qualified(s, t) for s, t in conn.execute(_EARLY_TABLES_SQL).fetchall()}
                self._plan = early, table_columns(conn) if self._checksums else {}
                conn.commit()
            return self._plan

    def _read(self, conn: psycopg.Connection[Any], item: _Item) -> None:
        name = qualified(item.schema, item.table)
        columns = item.columns
        if not item.late:
            early, known = self._planned(conn)
            if name not in early:
                return  # read after the restore
            columns = known.get(name)
            with self._lock:
                watched = not self._stopped.is_set()
                if watched:
                    self._reading[conn.info.backend_pid] = conn
        else:
            watched = False
        try:
            if self._checksums:
                count, total = count_and_checksum(
                    conn, item.schema, item.table,
                    method=self._methods.get(name, CHECKSUM_TYPED), columns=columns)
            else:
                count, total = count_rows(conn, item.schema, item.table), ""
            conn.commit()  # the table's lock released now, not at the read-back's end
        except psycopg.errors.QueryCanceled:
            if item.late:
                raise
            conn.rollback()  # it held up the restore: read after it (by `finish`)
            with self._lock:
                self._asked.discard(name)
                self.gave_way.append(name)
            return
        finally:
            if watched:
                with self._lock:
                    self._reading.pop(conn.info.backend_pid, None)
        with self._lock:
            self._done[name] = (count, total, columns)
            if watched:  # begun while the restore went on (not one still queued at its end)
                self.early.append(name)

    def _stop_watching(self) -> None:
        """The restore is over: no read gives way from now on (a cancel sent to a session
        after its read ended is ignored by the server, the session then idle)."""
        self._stopped.set()
        self._watcher.join()

    def close(self) -> None:
        """Stop reading (the restore failed): waits for the reads under way."""
        self._stop_watching()
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()
        if self._watch_conn is not None:
            self._watch_conn.close()

    def finish(self) -> ReadBack:
        """After the restore: the tables not read yet, on the same connections, and the
        catalogs on one of their own (as `read_back`)."""
        self._stop_watching()
        conn, self._watch_conn = self._watch_conn or self._connect(), None
        try:
            conn.autocommit = False
            tables, columns = tables_and_columns(conn, columns=self._checksums)
        except BaseException:
            conn.close()
            self.close()
            raise

        def described() -> tuple[Inventory, dict[str, str]]:
            with conn:
                return catalogs(conn, content=self._checksums, kinds=self._kinds)

        with ThreadPoolExecutor(max_workers=1) as side:
            reading = side.submit(described)
            with self._lock:
                late = [t for t in tables if qualified(*t) not in self._asked]
            for s, t in late:
                self._queue.put(_Item(s, t, late=True, columns=columns.get(qualified(s, t))))
            self.close()
            if self._errors:
                raise self._errors[0]

            def stale(name: str) -> bool:  # never read, or read with other columns
                done = self._done.get(name)
                return done is None or (self._checksums and done[2] != columns.get(name))

            again = [(s, t) for s, t in tables if stale(qualified(s, t))]
            counts, sums = table_contents(again, self._connect, workers=len(self._threads),
                                          checksums=self._checksums, methods=self._methods,
                                          columns=columns)
            for s, t in tables:
                name = qualified(s, t)
                if name not in counts:
                    counts[name], total, _ = self._done[name]
                    if self._checksums:
                        sums[name] = total
            inv, defs = reading.result()
        return ReadBack(counts=dict(sorted(counts.items())), inventory=inv, definitions=defs,
                        checksums=dict(sorted(sums.items())) if self._checksums else {})


def alembic_revision(conn: psycopg.Connection[Any], table: str = "alembic_version") -> str | None:
    """The Alembic revision(s) stamped in the database, comma-joined; None without Alembic.

    Found by name in any schema (public first), whatever the session's search_path."""
    found = conn.execute(
        "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relname = %s AND c.relkind IN ('r', 'p') "
        "ORDER BY n.nspname <> 'public', n.nspname LIMIT 1", (table,)).fetchone()
    if not found:
        return None
    rows = conn.execute(
        sql.SQL("SELECT version_num FROM {}.{} ORDER BY 1").format(
            sql.Identifier(found[0]), sql.Identifier(table))
    ).fetchall()
    return ",".join(r[0] for r in rows) or None
