-- TEST STAND-IN for BOINC: the tables of a BOINC 1.6.2 project database, column for column
-- as SHOW CREATE TABLE printed them on a real server (boinc-facts.md section 2), with the
-- indexes of db/constraints.sql. Most columns are NOT NULL without a default on purpose:
-- under MariaDB's default STRICT_TRANS_TABLES an INSERT that leaves one out fails with
-- error 1364, exactly as on a real project. Not product code.
-- Statements are separated by lines that end in ';' (create_boinc_database splits on that).

create table platform (
    id                      integer         not null auto_increment,
    create_time             integer         not null,
    name                    varchar(191)    not null,
    user_friendly_name      varchar(254)    not null,
    deprecated              tinyint         not null default 0,
    primary key (id),
    unique key name (name)
) engine=InnoDB default charset=utf8mb4 collate=utf8mb4_unicode_ci;

create table app (
    id                      integer         not null auto_increment,
    create_time             integer         not null,
    name                    varchar(191)    not null,
    min_version             integer         not null default 0,
    deprecated              smallint        not null default 0,
    user_friendly_name      varchar(254)    not null,
    homogeneous_redundancy  smallint        not null default 0,
    weight                  double          not null default 1,
    beta                    smallint        not null default 0,
    target_nresults         smallint        not null default 0,
    min_avg_pfc             double          not null default 1,
    host_scale_check        tinyint         not null default 0,
    homogeneous_app_version tinyint         not null default 0,
    non_cpu_intensive       tinyint         not null default 0,
    locality_scheduling     integer         not null default 0,
    n_size_classes          smallint        not null default 0,
    fraction_done_exact     tinyint         not null default 0,
    primary key (id),
    unique key name (name)
) engine=InnoDB default charset=utf8mb4 collate=utf8mb4_unicode_ci;

create table app_version (
    id                      integer         not null auto_increment,
    create_time             integer         not null,
    appid                   integer         not null,
    version_num             integer         not null,
    platformid              integer         not null,
    xml_doc                 mediumblob,
    min_core_version        integer         not null default 0,
    max_core_version        integer         not null default 0,
    deprecated              tinyint         not null default 0,
    plan_class              varchar(128)    not null default '',
    pfc_n                   double          not null default 0,
    pfc_avg                 double          not null default 0,
    pfc_scale               double          not null default 0,
    expavg_credit           double          not null default 0,
    expavg_time             double          not null default 0,
    beta                    tinyint         not null default 0,
    primary key (id),
    unique key apvp (appid, platformid, version_num, plan_class)
) engine=InnoDB default charset=utf8mb4 collate=utf8mb4_unicode_ci;

create table user (
    id                      integer         not null auto_increment,
    create_time             integer         not null,
    email_addr              varchar(191)    not null,
    name                    varchar(191),
    authenticator           varchar(191),
    country                 varchar(254),
    postal_code             varchar(254),
    total_credit            double          not null,
    expavg_credit           double          not null,
    expavg_time             double          not null,
    global_prefs            blob,
    project_prefs           blob,
    teamid                  integer         not null,
    venue                   varchar(254)    not null,
    url                     varchar(254),
    send_email              smallint        not null,
    show_hosts              smallint        not null,
    posts                   smallint        not null,
    seti_id                 integer         not null,
    seti_nresults           integer         not null,
    seti_last_result_time   integer         not null,
    seti_total_cpu          double          not null,
    signature               varchar(254),
    has_profile             smallint        not null,
    cross_project_id        varchar(254)    not null,
    passwd_hash             varchar(254)    not null,
    email_validated         smallint        not null,
    donated                 smallint        not null,
    login_token             char(32)        not null default '',
    login_token_time        double          not null default 0,
    previous_email_addr     varchar(254)    not null default '',
    email_addr_change_time  double          not null default 0,
    primary key (id),
    unique key email_addr (email_addr),
    unique key authenticator (authenticator),
    key ind_tid (teamid),
    unique key name (name),
    key user_tot (total_credit desc),
    key user_avg (expavg_credit desc),
    key user_email_time (email_addr_change_time)
) engine=InnoDB default charset=utf8mb4 collate=utf8mb4_unicode_ci;

create table workunit (
    id                      integer         not null auto_increment,
    create_time             integer         not null,
    appid                   integer         not null,
    name                    varchar(191)    not null,
    xml_doc                 blob,
    batch                   integer         not null,
    rsc_fpops_est           double          not null,
    rsc_fpops_bound         double          not null,
    rsc_memory_bound        double          not null,
    rsc_disk_bound          double          not null,
    need_validate           smallint        not null,
    canonical_resultid      integer         not null,
    canonical_credit        double          not null,
    transition_time         integer         not null,
    delay_bound             integer         not null,
    error_mask              integer         not null,
    file_delete_state       integer         not null,
    assimilate_state        integer         not null,
    hr_class                integer         not null,
    opaque                  double          not null,
    min_quorum              integer         not null,
    target_nresults         integer         not null,
    max_error_results       integer         not null,
    max_total_results       integer         not null,
    max_success_results     integer         not null,
    result_template_file    varchar(63)     not null,
    priority                integer         not null,
    mod_time                timestamp       null default current_timestamp on update current_timestamp,
    rsc_bandwidth_bound     double          not null,
    fileset_id              integer         not null,
    app_version_id          integer         not null,
    transitioner_flags      tinyint         not null,
    size_class              smallint        not null default -1,
    keywords                varchar(254)    not null,
    app_version_num         integer         not null,
    primary key (id),
    unique key name (name),
    key wu_val (appid, need_validate),
    key wu_timeout (transition_time),
    key wu_filedel (file_delete_state),
    key wu_assim (appid, assimilate_state),
    key wu_batch (batch)
) engine=InnoDB default charset=utf8mb4 collate=utf8mb4_unicode_ci;

create table result (
    id                      integer         not null auto_increment,
    create_time             integer         not null,
    workunitid              integer         not null,
    server_state            integer         not null,
    outcome                 integer         not null,
    client_state            integer         not null,
    hostid                  integer         not null,
    userid                  integer         not null,
    report_deadline         integer         not null,
    sent_time               integer         not null,
    received_time           integer         not null,
    name                    varchar(191)    not null,
    cpu_time                double          not null,
    xml_doc_in              blob,
    xml_doc_out             blob,
    stderr_out              blob,
    batch                   integer         not null,
    file_delete_state       integer         not null,
    validate_state          integer         not null,
    claimed_credit          double          not null,
    granted_credit          double          not null,
    opaque                  double          not null,
    random                  integer         not null,
    app_version_num         integer         not null,
    appid                   integer         not null,
    exit_status             integer         not null,
    teamid                  integer         not null,
    priority                integer         not null,
    mod_time                timestamp       null default current_timestamp on update current_timestamp,
    elapsed_time            double          not null,
    flops_estimate          double          not null,
    app_version_id          integer         not null,
    runtime_outlier         tinyint         not null,
    size_class              smallint        not null default -1,
    peak_working_set_size   double          not null,
    peak_swap_size          double          not null,
    peak_disk_usage         double          not null,
    primary key (id),
    unique key name (name),
    key res_wuid (workunitid),
    key ind_res_st (server_state, priority),
    key res_app_state (appid, server_state),
    key res_filedel (file_delete_state),
    key res_userid_id (userid, id desc),
    key res_userid_val (userid, validate_state),
    key res_hostid_id (hostid, id desc),
    key res_batch (batch)
) engine=InnoDB default charset=utf8mb4 collate=utf8mb4_unicode_ci;

create table batch (
    id                      bigint unsigned not null auto_increment,
    user_id                 integer         not null,
    create_time             integer         not null,
    logical_start_time      double          not null,
    logical_end_time        double          not null,
    est_completion_time     double          not null,
    njobs                   integer         not null,
    fraction_done           double          not null,
    nerror_jobs             integer         not null,
    state                   integer         not null,
    completion_time         double          not null,
    credit_estimate         double          not null,
    credit_canonical        double          not null,
    credit_total            double          not null,
    name                    varchar(255)    not null,
    app_id                  integer         not null,
    project_state           integer         not null,
    description             varchar(255)    not null,
    expire_time             double          not null,
    primary key (id)
) engine=InnoDB default charset=utf8mb4 collate=utf8mb4_unicode_ci;

create table user_submit (
    user_id                 integer         not null,
    quota                   double          not null,
    logical_start_time      double          not null,
    submit_all              tinyint         not null,
    manage_all              tinyint         not null,
    max_jobs_in_progress    integer         not null,
    primary key (user_id)
) engine=InnoDB default charset=utf8mb4 collate=utf8mb4_unicode_ci;

create table user_submit_app (
    user_id                 integer         not null,
    app_id                  integer         not null,
    manage                  tinyint         not null,
    primary key (user_id, app_id)
) engine=InnoDB default charset=utf8mb4 collate=utf8mb4_unicode_ci;

create table job_file (
    id                      integer         not null auto_increment,
    name                    varchar(191)    not null,
    create_time             double          not null,
    delete_time             double          not null,
    primary key (id),
    unique key jf_name (name)
) engine=InnoDB default charset=utf8mb4 collate=utf8mb4_unicode_ci;

create table assignment (
    id                      integer         not null auto_increment,
    create_time             integer         not null,
    target_id               integer         not null,
    target_type             integer         not null,
    multi                   tinyint         not null,
    workunitid              integer         not null,
    resultid                integer         not null,
    primary key (id),
    key asgn_target (target_type, target_id)
) engine=InnoDB default charset=utf8mb4 collate=utf8mb4_unicode_ci;

-- The project administrator (user 1), created the way html/user/create_account does it,
-- with submit rights for every app (as the verified test installation had).
insert into user (id, create_time, email_addr, name, authenticator, country, postal_code,
    total_credit, expavg_credit, expavg_time, global_prefs, project_prefs, teamid, venue, url,
    send_email, show_hosts, posts, seti_id, seti_nresults, seti_last_result_time, seti_total_cpu,
    signature, has_profile, cross_project_id, passwd_hash, email_validated, donated,
    login_token, login_token_time, previous_email_addr, email_addr_change_time)
values (1, unix_timestamp(), 'admin@localhost', 'admin', md5(concat(rand(), now(6))), '', '',
    0, 0, 0, '', '', 0, '', '',
    1, 1, 0, 0, 0, 0, 0,
    '', 0, md5(concat(rand(), 'cpid')), md5(concat('admin', 'admin@localhost')), 1, 0,
    '', 0, '', 0);

insert into user_submit (user_id, quota, logical_start_time, submit_all, manage_all,
    max_jobs_in_progress)
values (1, 0, 0, 1, 1, 0);
