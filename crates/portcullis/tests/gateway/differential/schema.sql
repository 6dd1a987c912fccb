-- What the differential test's database holds besides `items`: objects for
-- sqlsmith to draw from, and functions that write in disguise. Run as the
-- superuser, then owned by the gateway's upstream user, who can write.
set role app_scram;
create table orders (id serial primary key, item int references items (id), qty int not null default 1, note text, placed timestamptz default now());
insert into orders (item, qty, note) select g % 10 + 1, g, 'order ' || g from generate_series(1, 50) g;
create table audit_log (id bigserial primary key, at timestamptz default now(), what text);
create sequence counter;
create view big_orders as select o.id, o.qty, i.name from orders o join items i on i.id = o.item where o.qty > 10;
create index on orders (item);
-- Stable and immutable user functions: reads.
create function price_of(i int) returns int language sql stable as 'select i * 100';
create function twice(i int) returns int language sql immutable as 'select i * 2';
-- Volatile user functions that write.
create function bump() returns int language sql as 'update items set name = name where id = 1 returning 1';
create function log_it(w text) returns bigint language sql as 'insert into audit_log (what) values (w) returning id';
create function bump_row(o orders) returns int language sql as 'update orders set qty = qty where id = $1.id returning 1';
-- SECURITY DEFINER, although it only reads.
create function owner_count() returns bigint language sql stable security definer as 'select count(*) from items';
create procedure do_bump() language sql as 'update items set name = name where id = 2';
-- An operator whose function writes.
create function op_bump(a int, b int) returns int language sql as 'update items set name = name where id = 3 returning a + b';
create operator ### (function = op_bump, leftarg = int, rightarg = int);
select lo_create(4242);
reset role;
