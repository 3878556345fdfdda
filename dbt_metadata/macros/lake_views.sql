{#- Where the lake's records are: a local folder, a mirror of an S3 lake, or s3:// where DuckDB has httpfs. -#}
{% macro lake_root() %}
  {{- return((var('lake_root', env_var('AD_LAKE_DIR', '../.state/lake')) | string).rstrip('/')) -}}
{% endmacro %}

{#- The SELECT a lake source's view is: the record's files cast to the declared column types, or zero rows
    with those columns while the record has no file (a fresh lake, or a stage that has not run yet). -#}
{% macro lake_view_sql(node) %}
  {%- set glob = (lake_root() ~ '/' ~ node.meta.folder ~ '/*/*.' ~ node.meta.file_format) | replace("'", "''") -%}
  {%- set columns = node.columns.values() | list -%}
  {%- set found = run_query("select count(*) from glob('" ~ glob ~ "')").columns[0].values()[0] -%}
  {%- if found == 0 -%}
    select {% for c in columns %}cast(null as {{ c.data_type }}) as "{{ c.name }}"{{ ", " if not loop.last }}{% endfor %} where false
  {%- elif node.meta.file_format == 'json' -%}
    select {% for c in columns %}"{{ c.name }}"{{ ", " if not loop.last }}{% endfor %}
    from read_json('{{ glob }}', columns = { {%- for c in columns %}'{{ c.name }}': '{{ c.data_type | replace("'", "''") }}'{{ ", " if not loop.last }}{% endfor -%} })
  {%- else -%}
    select {% for c in columns %}cast("{{ c.name }}" as {{ c.data_type }}) as "{{ c.name }}"{{ ", " if not loop.last }}{% endfor %}
    from read_parquet('{{ glob }}', union_by_name = true)
  {%- endif -%}
{% endmacro %}

{#- on-run-start: one view per source of the `lake` source in its schema. Views read the files at query time,
    like the DuckDB catalog's (ad_resources/catalog.py); the models are tables built from them. -#}
{% macro create_lake_views() %}
  {%- if execute -%}
    {%- set lake_sources = graph.sources.values() | selectattr('source_name', 'equalto', 'lake') | list -%}
    {%- if lake_sources -%}
      {%- do run_query('create schema if not exists "' ~ lake_sources[0].schema ~ '"') -%}
    {%- endif -%}
    {%- for node in lake_sources -%}
      {%- do run_query('create or replace view "' ~ node.schema ~ '"."' ~ node.name ~ '" as ' ~ lake_view_sql(node)) -%}
    {%- endfor -%}
    {%- do log("lake views over " ~ lake_root() ~ ": " ~ (lake_sources | map(attribute='name') | join(', ')), info=false) -%}
  {%- endif -%}
  select 1
{% endmacro %}

{#- generate_schema_name: a model's +schema is used as is (no <target schema>_ prefix). -#}
{% macro generate_schema_name(custom_schema_name, node) -%}
  {{- (custom_schema_name or target.schema) | trim -}}
{%- endmacro %}
